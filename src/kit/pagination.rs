//! Page sizes and page tokens. A token is opaque to callers: it holds the sort key of the last
//! item served and a fingerprint of the filters, so a token reused with other filters is refused
//! instead of silently answering the wrong page.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::error::{ServiceError, ServiceResult};

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 200;

/// A validated page request: how many items, and after which sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u32,
    /// The sort key of the last item of the previous page; `None` for the first page.
    pub after: Option<Vec<String>>,
    filters: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Token {
    after: Vec<String>,
    filters: String,
}

/// A fingerprint of the filters a listing was asked with.
pub fn filter_fingerprint(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..8])
}

impl PageRequest {
    /// Parses `page_size` (0 means the default; at most [`MAX_PAGE_SIZE`]) and `page_token`.
    pub fn parse(page_size: i32, page_token: &str, filters: String) -> ServiceResult<Self> {
        let size = match page_size {
            n if n < 0 => return Err(ServiceError::invalid("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        if page_token.is_empty() {
            return Ok(Self { size, after: None, filters });
        }
        let bytes = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| bad_token())?;
        let token: Token = serde_json::from_slice(&bytes).map_err(|_| bad_token())?;
        if token.filters != filters {
            return Err(ServiceError::invalid(
                "page_token",
                "was issued for different filters; start again without a token",
            ));
        }
        Ok(Self { size, after: Some(token.after), filters })
    }

    /// The `(after?, time, id)` parameters of a keyset page ordered by (time, id): `after?` is 0
    /// on the first page (and time and id then match everything).
    pub fn time_id_cursor(&self) -> ServiceResult<(i64, chrono::DateTime<chrono::Utc>, String)> {
        match self.after.as_deref() {
            None => Ok((0, chrono::DateTime::UNIX_EPOCH, String::new())),
            Some([time, id]) => {
                let time = chrono::DateTime::parse_from_rfc3339(time).map_err(|_| bad_token())?;
                Ok((1, time.with_timezone(&chrono::Utc), id.clone()))
            }
            Some(_) => Err(bad_token()),
        }
    }

    /// The number after which a page ordered by a number starts (0 on the first page).
    pub fn number_cursor(&self) -> ServiceResult<i64> {
        match self.after.as_deref() {
            None => Ok(0),
            Some([number]) => number.parse().map_err(|_| bad_token()),
            Some(_) => Err(bad_token()),
        }
    }

    /// The `(after?, text, id)` parameters of a keyset page ordered by (text, id).
    pub fn text_id_cursor(&self) -> ServiceResult<(i64, String, String)> {
        match self.after.as_deref() {
            None => Ok((0, String::new(), String::new())),
            Some([text, id]) => Ok((1, text.clone(), id.clone())),
            Some(_) => Err(bad_token()),
        }
    }

    /// The token for the page after the one that ended with sort key `last`, or an empty string
    /// when the page was not full (there is nothing after it).
    pub fn next_token(&self, served: usize, last: Option<Vec<String>>) -> String {
        match last {
            Some(after) if served as u32 >= self.size => self.token_after(after),
            _ => String::new(),
        }
    }

    /// The token for the page that starts after sort key `after`, with this request's filters.
    pub fn token_after(&self, after: Vec<String>) -> String {
        let token = Token { after, filters: self.filters.clone() };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
    }
}

/// The sort key of an item of a listing ordered by (time, id), as a page token holds it.
pub fn time_id_key(time: chrono::DateTime<chrono::Utc>, id: impl std::fmt::Display) -> Vec<String> {
    vec![time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), id.to_string()]
}

pub(crate) fn bad_token() -> ServiceError {
    ServiceError::invalid("page_token", "is not a token this service issued")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_is_bound_to_its_filters() {
        let page = PageRequest::parse(2, "", "f1".into()).unwrap();
        assert_eq!(page.size, 2);
        let token = page.next_token(2, Some(vec!["b".into(), "id2".into()]));
        let next = PageRequest::parse(2, &token, "f1".into()).unwrap();
        assert_eq!(next.after, Some(vec!["b".to_string(), "id2".to_string()]));
        assert!(PageRequest::parse(2, &token, "f2".into()).is_err());
        assert!(PageRequest::parse(2, "garbage!", "f1".into()).is_err());
    }

    #[test]
    fn cursors_read_back_their_keys() {
        let time =
            chrono::DateTime::parse_from_rfc3339("2026-11-26T10:00:00.123456Z").unwrap().with_timezone(&chrono::Utc);
        let page = PageRequest::parse(1, "", "f".into()).unwrap();
        assert_eq!(page.time_id_cursor().unwrap().0, 0);
        let token = page.next_token(1, Some(time_id_key(time, "id-1")));
        let next = PageRequest::parse(1, &token, "f".into()).unwrap();
        assert_eq!(next.time_id_cursor().unwrap(), (1, time, "id-1".to_owned()));
        assert!(next.text_id_cursor().is_ok());
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(PageRequest::parse(0, "", String::new()).unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::parse(10_000, "", String::new()).unwrap().size, MAX_PAGE_SIZE);
        assert!(PageRequest::parse(-1, "", String::new()).is_err());
        let page = PageRequest::parse(5, "", String::new()).unwrap();
        assert_eq!(page.next_token(3, Some(vec!["x".into()])), "");
    }
}
