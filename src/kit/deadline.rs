//! A call's deadline, fixed when the call arrives: the caller's `grpc-timeout`, or the server's
//! RPC_TIMEOUT_SECS when it is shorter or the caller set none.
//!
//! The kit's call layer ([`super::calls`]) puts it in the request's extensions and answers
//! DEADLINE_EXCEEDED when it passes (as the gRPC specification says a server does, where tonic's
//! own timeout answers CANCELLED). A handler that must answer before it, naming what it recorded,
//! reads the time left from the same instant, so that its answer and the layer's cannot race.

use std::time::Duration;

use tokio::time::Instant;

/// When a call must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline(Instant);

impl CallDeadline {
    /// The deadline of a call arriving now with `headers`, on a server whose own limit is
    /// `rpc_timeout`. A malformed `grpc-timeout` is ignored (the server's limit stands).
    pub fn arriving(headers: &http::HeaderMap, rpc_timeout: Duration) -> Self {
        let asked = headers.get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout);
        let timeout = asked.map_or(rpc_timeout, |asked| asked.min(rpc_timeout));
        Self(Instant::now() + timeout)
    }

    pub fn instant(&self) -> Instant {
        self.0
    }

    /// The time left until the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The deadline of the call `extensions` belong to, if the kit's layer set one.
    pub fn of(extensions: &http::Extensions) -> Option<Self> {
        extensions.get::<Self>().copied()
    }
}

/// A `grpc-timeout` header value (`<digits><unit>`, at most 8 digits, unit one of `H M S m u n`),
/// if it is well formed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        for bad in ["", "S", "12", "1x", "-1S", "+1S", "1234567890S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    /// Whether `left` is `right`, give or take the time the test itself takes.
    fn about(left: Duration, right: Duration) -> bool {
        left <= right && right - left < Duration::from_secs(1)
    }

    #[tokio::test]
    async fn the_shorter_of_the_callers_timeout_and_the_servers_wins() {
        let mut headers = http::HeaderMap::new();
        let server = Duration::from_secs(30);
        assert!(about(CallDeadline::arriving(&headers, server).remaining(), server));
        headers.insert("grpc-timeout", "800m".parse().unwrap());
        assert!(about(CallDeadline::arriving(&headers, server).remaining(), Duration::from_millis(800)));
        headers.insert("grpc-timeout", "2M".parse().unwrap());
        assert!(about(CallDeadline::arriving(&headers, server).remaining(), server));
        headers.insert("grpc-timeout", "soon".parse().unwrap());
        assert!(about(CallDeadline::arriving(&headers, server).remaining(), server));

        let deadline = CallDeadline::arriving(&http::HeaderMap::new(), Duration::from_millis(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(deadline.remaining(), Duration::ZERO);
    }
}
