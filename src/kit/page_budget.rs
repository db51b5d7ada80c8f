//! Pages bounded in bytes as well as in items.
//!
//! A page of `page_size` items can still be too big for one gRPC message: a valid workflow may
//! carry megabytes of prompts and flow export, an execution a long input and output. The answer
//! would then fail as a whole (OUT_OF_RANGE at the encoder), and the caller could never get past
//! it. So a page also stops before its items would exceed a byte budget, and its
//! `next_page_token` then starts the next page right after the last item it kept.
//!
//! The budget is the message limit less [`ENVELOPE_BYTES`] (at most half the limit) for the rest
//! of the answer (the token and the few scalar fields beside the list). An item that alone exceeds the budget is still
//! served alone when it fits the message limit at all; one that does not (only possible when
//! MAX_MESSAGE_BYTES is set below what the service accepts as input) is FAILED_PRECONDITION,
//! naming the item: the operator has to raise the limit, the caller can do nothing about it.

use prost::Message;

use super::error::{ServiceError, ServiceResult};
use super::pagination::PageRequest;

/// Room left in every answer for what is not a list item: the next page token (a sort key of at
/// most a few hundred characters, base64-encoded) and the answer's other fields.
pub const ENVELOPE_BYTES: usize = 64 * 1024;

/// How many bytes of list items one answer may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBudget {
    /// The most bytes of encoded items in one page.
    items: usize,
    /// The message limit: a single item up to this size (less its token) is still served alone.
    message: usize,
}

impl PageBudget {
    /// The budget under a message limit of `max_message_bytes`: `max_page_bytes` when given
    /// (it may only be smaller), else the limit less [`ENVELOPE_BYTES`] (or half the limit, when
    /// it is that small).
    pub fn new(max_message_bytes: usize, max_page_bytes: Option<usize>) -> Result<Self, String> {
        let ceiling = max_message_bytes - ENVELOPE_BYTES.min(max_message_bytes / 2);
        let items = match max_page_bytes {
            None => ceiling,
            Some(0) => return Err("MAX_PAGE_BYTES must be more than 0".into()),
            Some(bytes) if bytes > ceiling => {
                return Err(format!(
                    "MAX_PAGE_BYTES ({bytes}) must be at most MAX_MESSAGE_BYTES less room for the rest of the answer ({ceiling})"
                ));
            }
            Some(bytes) => bytes,
        };
        Ok(Self { items, message: max_message_bytes })
    }

    /// The most bytes of items in one page.
    pub fn items(&self) -> usize {
        self.items
    }

    /// For answers that are reports rather than pages (what a call did, with no next page to
    /// ask for): keeps the leading `items` while they fit what is left of the budget after
    /// `used` bytes (which grows by what is kept); answers them and how many were left out.
    pub fn keep_fitting<T: Message>(&self, items: impl IntoIterator<Item = T>, used: &mut usize) -> (Vec<T>, usize) {
        let mut kept = Vec::new();
        let mut omitted = 0;
        for item in items {
            let len = element_len(&item);
            if omitted == 0 && *used + len <= self.items {
                *used += len;
                kept.push(item);
            } else {
                omitted += 1;
            }
        }
        (kept, omitted)
    }
}

/// One page of an answer: the items that fit, and the token of the page after them (empty when
/// there is none).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_page_token: String,
}

/// The bytes `message` adds to an answer as one element of a repeated field: its key (one byte
/// for the field numbers below 16 that every list uses), its length and its body.
pub fn element_len(message: &impl Message) -> usize {
    let body = message.encoded_len();
    1 + prost::encoding::encoded_len_varint(body as u64) + body
}

impl PageRequest {
    /// The page of `rows` (as read for this request: at most `self.size`, in order) that fits
    /// `budget`, each converted by `to_message`; `sort_key` is what a page token holds of a
    /// row, `name` how an error names it. The next page token follows the last item kept when
    /// the page was cut short by bytes, or when it was full (there may be more).
    pub fn fill<R, T: Message>(
        &self,
        rows: &[R],
        budget: PageBudget,
        to_message: impl Fn(&R) -> T,
        sort_key: impl Fn(&R) -> Vec<String>,
        name: impl Fn(&R) -> String,
    ) -> ServiceResult<Page<T>> {
        let mut items = Vec::new();
        let mut used = 0;
        for row in rows {
            let message = to_message(row);
            let len = element_len(&message);
            if used + len > budget.items {
                if items.is_empty() {
                    // Alone it may still fit the message, with its token beside it.
                    let token = self.token_after(sort_key(row));
                    if len + token.len() + 8 > budget.message {
                        return Err(ServiceError::FailedPrecondition(format!(
                            "{} is {len} bytes encoded, more than one answer may carry ({} bytes, \
                             MAX_MESSAGE_BYTES); it cannot be listed until the limit is raised",
                            name(row),
                            budget.message
                        )));
                    }
                    return Ok(Page { items: vec![message], next_page_token: token });
                }
                let last = &rows[items.len() - 1];
                return Ok(Page { items, next_page_token: self.token_after(sort_key(last)) });
            }
            used += len;
            items.push(message);
        }
        let next_page_token = self.next_token(items.len(), rows.last().map(&sort_key));
        Ok(Page { items, next_page_token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Blob {
        #[prost(string, tag = "1")]
        text: String,
    }

    fn rows(sizes: &[usize]) -> Vec<(usize, usize)> {
        sizes.iter().copied().enumerate().collect()
    }

    fn fill(page: &PageRequest, sizes: &[usize], budget: PageBudget) -> ServiceResult<Page<Blob>> {
        page.fill(
            &rows(sizes),
            budget,
            |r| Blob { text: "x".repeat(r.1) },
            |r| vec![r.0.to_string()],
            |r| format!("blob {}", r.0),
        )
    }

    fn budget(items: usize, message: usize) -> PageBudget {
        PageBudget { items, message }
    }

    #[test]
    fn a_page_stops_before_its_bytes_would_exceed_the_budget() {
        let page = PageRequest::parse(10, "", "f".into()).unwrap();
        // A blob of 100 characters is 104 bytes as an element: two fit in 250 bytes, not three.
        let filled = fill(&page, &[100, 100, 100], budget(250, 10_000)).unwrap();
        assert_eq!(filled.items.len(), 2);
        let next = PageRequest::parse(10, &filled.next_page_token, "f".into()).unwrap();
        assert_eq!(next.after, Some(vec!["1".to_string()]), "the next page starts after the last item kept");
    }

    #[test]
    fn a_page_that_fits_keeps_the_usual_token_rules() {
        let page = PageRequest::parse(3, "", "f".into()).unwrap();
        let full = fill(&page, &[10, 10, 10], budget(10_000, 20_000)).unwrap();
        assert_eq!(full.items.len(), 3);
        assert!(!full.next_page_token.is_empty(), "a full page may have a next one");
        let short = fill(&page, &[10, 10], budget(10_000, 20_000)).unwrap();
        assert_eq!(short.items.len(), 2);
        assert_eq!(short.next_page_token, "", "a short page is the last");
    }

    #[test]
    fn an_item_larger_than_the_budget_comes_alone_or_is_refused_by_name() {
        let page = PageRequest::parse(10, "", "f".into()).unwrap();
        let alone = fill(&page, &[500, 10], budget(100, 10_000)).unwrap();
        assert_eq!(alone.items.len(), 1);
        let next = PageRequest::parse(10, &alone.next_page_token, "f".into()).unwrap();
        assert_eq!(next.after, Some(vec!["0".to_string()]));

        let refused = fill(&page, &[20_000], budget(100, 10_000)).unwrap_err();
        match refused {
            ServiceError::FailedPrecondition(message) => assert!(message.contains("blob 0"), "{message}"),
            other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
        }
    }

    #[test]
    fn a_report_keeps_what_fits_in_order_and_counts_the_rest() {
        let blob = |n: usize| Blob { text: "x".repeat(n) };
        let mut used = 0;
        let (kept, omitted) = budget(200, 10_000).keep_fitting([blob(100), blob(10), blob(100), blob(10)], &mut used);
        assert_eq!(kept, vec![blob(100), blob(10)]);
        assert_eq!(omitted, 2, "nothing after the first item left out, so the order holds");
        let (kept, omitted) = budget(200, 10_000).keep_fitting([blob(100)], &mut used);
        assert!(kept.is_empty());
        assert_eq!(omitted, 1, "the budget is shared through `used`");
    }

    #[test]
    fn the_budget_is_the_message_limit_less_the_envelope_unless_set_smaller() {
        assert_eq!(PageBudget::new(4 << 20, None).unwrap().items(), (4 << 20) - ENVELOPE_BYTES);
        assert_eq!(PageBudget::new(4 << 20, Some(1000)).unwrap().items(), 1000);
        assert!(PageBudget::new(4 << 20, Some(4 << 20)).is_err());
        assert!(PageBudget::new(4 << 20, Some(0)).is_err());
        assert_eq!(PageBudget::new(1000, None).unwrap().items(), 500, "a small limit keeps half for the envelope");
    }
}
