//! The one case-folding rule of name searches (`ListWorkflows.name_contains`).
//!
//! Databases disagree on case: SQLite's LOWER folds ASCII only ("ÄPFEL" stays "ÄPFEL"), and
//! PostgreSQL's follows the database's collation (under "C", "İ" stays "İ"). So the database
//! does not fold at all: this function does, in Rust, both for the `name_folded` column written
//! with every name and for the search text, and the search is a plain substring match of the
//! two. The rule is Rust's [`str::to_lowercase`] (Unicode's default lowercase mapping):
//! - "ÄPFEL Kampagne" and "äpfel kampagne" fold alike;
//! - "İ" (capital I with dot above) folds to "i̇" (i + combining dot above), so "İstanbul" is
//!   found by "İstanbul" and by "i̇stanbul", not by a plain "istanbul";
//! - "ß" and "ẞ" fold to "ß"; "SS" folds to "ss", which is not "ß" (no full case folding).

/// A name or search text as name searches compare it.
pub fn fold_name(name: &str) -> String {
    name.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::fold_name;

    #[test]
    fn names_fold_by_unicode_lowercase() {
        assert_eq!(fold_name("ÄPFEL Kampagne"), "äpfel kampagne");
        assert_eq!(fold_name("İstanbul launch"), "i\u{307}stanbul launch");
        assert_eq!(fold_name("i\u{307}stanbul"), fold_name("İstanbul"));
        assert_ne!(fold_name("istanbul"), fold_name("İstanbul"));
        assert_eq!(fold_name("STRAẞE"), "straße");
        assert_ne!(fold_name("STRASSE"), fold_name("Straße"));
        assert_eq!(fold_name("100% _Sale_"), "100% _sale_");
    }
}
