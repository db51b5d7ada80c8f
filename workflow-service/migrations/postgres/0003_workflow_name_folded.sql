-- The name as name searches compare it, folded by the service (domain/name_folding.rs: Rust's
-- str::to_lowercase) rather than by the database, whose LOWER differs between SQLite (ASCII
-- only) and PostgreSQL (by collation). Written with every name; rows from before this column
-- are filled in by the service at start-up (NULL until then).
ALTER TABLE workflows ADD COLUMN name_folded TEXT;
