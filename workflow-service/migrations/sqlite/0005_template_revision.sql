-- The library revision a built-in template was last seeded at (0: seeded before revisions
-- existed, brought up to date at the next start). Only rows of the library use it.
ALTER TABLE workflows ADD COLUMN template_revision INTEGER NOT NULL DEFAULT 0;
