//! Latency samples and their summary: every call's latency is kept (a sorted `Vec`, no
//! histogram approximation) and every non-OK answer is counted by code.

use std::collections::BTreeMap;
use std::time::Duration;

/// What one load run recorded: the latency of each successful call, and the failed ones by code.
#[derive(Debug, Default)]
pub struct Samples {
    nanos: Vec<u64>,
    errors: BTreeMap<String, u64>,
}

impl Samples {
    pub fn record(&mut self, latency: Duration) {
        self.nanos.push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn error(&mut self, what: impl Into<String>) {
        *self.errors.entry(what.into()).or_default() += 1;
    }

    pub fn merge(&mut self, other: Samples) {
        self.nanos.extend(other.nanos);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    /// The summary of a run whose measured window lasted `window`.
    pub fn summarize(mut self, window: Duration) -> Summary {
        self.nanos.sort_unstable();
        let n = self.nanos.len();
        let at = |q: f64| -> Duration {
            if n == 0 {
                return Duration::ZERO;
            }
            // Nearest rank: the smallest sample with at least q of the samples at or below it.
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            Duration::from_nanos(self.nanos[rank - 1])
        };
        Summary {
            ok: n as u64,
            errors: self.errors,
            window,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: self.nanos.last().map_or(Duration::ZERO, |&ns| Duration::from_nanos(ns)),
        }
    }
}

/// A load run in numbers.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Calls that answered OK within the measured window.
    pub ok: u64,
    /// Failed calls (warm-up included), by gRPC code or failure.
    pub errors: BTreeMap<String, u64>,
    pub window: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Successful calls per second over the measured window.
    pub fn rps(&self) -> f64 {
        let secs = self.window.as_secs_f64();
        if secs > 0.0 { self.ok as f64 / secs } else { 0.0 }
    }

    /// "UNAVAILABLE×3, client timeout×1", or "none".
    pub fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        self.errors.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(", ")
    }
}

/// Milliseconds, as a float, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median of some durations (the lower middle one for an even count).
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    if values.is_empty() { Duration::ZERO } else { values[(values.len() - 1) / 2] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.record(Duration::from_millis(i));
        }
        s.error("UNAVAILABLE");
        let sum = s.summarize(Duration::from_secs(2));
        assert_eq!(sum.p50, Duration::from_millis(50));
        assert_eq!(sum.p99, Duration::from_millis(99));
        assert_eq!(sum.max, Duration::from_millis(100));
        assert_eq!(sum.ok, 100);
        assert_eq!(sum.failed(), 1);
        assert!((sum.rps() - 50.0).abs() < 1e-9);
    }
}
