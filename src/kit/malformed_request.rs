//! A request whose gRPC framing is broken is the caller's mistake, so INVALID_ARGUMENT, not
//! INTERNAL.
//!
//! Protobuf that does not decode is answered by our codec (`crate::codec`); the gRPC frame
//! around it is read by tonic, which answers INTERNAL, before any handler runs, when a unary or
//! server-streaming request carries no message at all, a message cut short (its length prefix
//! promises more bytes than the request has), or a compression flag other than 0 and 1.
//! [`reclassify`] turns exactly those answers (trailers-only, their text is tonic's) into
//! INVALID_ARGUMENT; every other INTERNAL is left alone. (A compressed flag without a
//! `grpc-encoding` stays INTERNAL: the gRPC specification requires it.) It is applied to every
//! answer, health and reflection included, by the kit's one layer around every call
//! ([`super::calls`]), before the call is logged, so that the log line and metrics carry the
//! code the caller gets.

/// What tonic answers, with INTERNAL, to a request whose framing is broken.
fn is_malformed_request(message: &str) -> bool {
    message == "Missing request message."
        || message == "Unexpected EOF decoding stream."
        || message.starts_with("protocol error: received message with invalid compression flag")
}

/// Rewrites a trailers-only INTERNAL answer to a malformed request as INVALID_ARGUMENT.
pub(super) fn reclassify(headers: &mut http::HeaderMap) {
    let internal = headers.get("grpc-status").is_some_and(|code| code == "13");
    let malformed = || {
        let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
        is_malformed_request(&percent_decoded(message))
    };
    if internal && malformed() {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// grpc-message is percent-encoded (only bytes outside printable ASCII, and `%`, are).
fn percent_decoded(message: &str) -> String {
    let bytes = message.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: &str, message: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", code.parse().unwrap());
        headers.insert("grpc-message", message.parse().unwrap());
        reclassify(&mut headers);
        headers
    }

    #[test]
    fn only_tonics_answers_to_broken_framing_become_invalid_argument() {
        for message in [
            "Missing request message.",
            "Unexpected EOF decoding stream.",
            "protocol error: received message with invalid compression flag: 2 (valid flags are 0 and 1), while sending request",
        ] {
            assert_eq!(answer("13", message)["grpc-status"], "3", "{message}");
        }
        assert_eq!(answer("13", "Unexpected%20EOF decoding stream.")["grpc-status"], "3");
        for (code, message) in [
            ("13", "internal error"),
            ("13", "protocol error: received message with compressed-flag but no grpc-encoding was specified"),
            ("14", "Missing request message."),
        ] {
            assert_eq!(answer(code, message)["grpc-status"], code, "{message}");
        }
    }
}
