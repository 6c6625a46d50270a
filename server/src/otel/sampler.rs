//! Which requests are traced: OpenTelemetry's parent-based sampler over a trace-id ratio. A request
//! whose caller sent a valid `traceparent` follows the caller's decision (its sampled flag), so a trace
//! is whole or absent across services; a request without one starts a trace, recorded for
//! `--otlp-sampling-ratio` of trace ids.

use super::context::Parent;

#[derive(Clone, Copy, Debug)]
pub struct Sampler {
    /// A root trace is recorded when the 63 low bits of its trace id are below this.
    threshold: u64,
    /// Ratio 1: every root, whatever its id (the threshold cannot reach 2^63 exactly).
    all: bool,
}

impl Sampler {
    /// `ratio` from 0 (no root is recorded) to 1 (every one); out of range is clamped.
    pub fn new(ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        Sampler {
            threshold: (ratio * (1u64 << 63) as f64) as u64,
            all: ratio >= 1.0,
        }
    }

    /// Whether to record the request's span: the caller's decision if it sent one, else the ratio
    /// applied to the new trace's id (as OpenTelemetry's TraceIdRatioBased: the same id always gets
    /// the same answer).
    pub fn sample(&self, parent: Option<&Parent>, trace_id: &[u8; 16]) -> bool {
        match parent {
            Some(parent) => parent.sampled,
            None => self.all || self.by_ratio(trace_id),
        }
    }

    fn by_ratio(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.threshold
    }

    /// Whether a request without a caller's decision can be recorded at all: with ratio 0 nothing is
    /// drawn for it.
    pub fn roots(&self) -> bool {
        self.threshold > 0 || self.all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otel::context::new_trace_id;

    fn parent(sampled: bool) -> Parent {
        Parent {
            trace_id: [7; 16],
            span_id: [3; 8],
            sampled,
        }
    }

    #[test]
    fn a_callers_decision_is_followed_whatever_the_ratio() {
        for ratio in [0.0, 0.5, 1.0] {
            let sampler = Sampler::new(ratio);
            assert!(sampler.sample(Some(&parent(true)), &[7; 16]), "{ratio}");
            assert!(!sampler.sample(Some(&parent(false)), &[7; 16]), "{ratio}");
        }
    }

    #[test]
    fn roots_are_sampled_by_ratio_of_the_trace_id() {
        let never = Sampler::new(0.0);
        let always = Sampler::new(1.0);
        assert!(!never.roots());
        assert!(always.roots());
        for id in [[0u8; 16], [0xff; 16], new_trace_id()] {
            assert!(!never.sample(None, &id));
            assert!(always.sample(None, &id));
        }
        let half = Sampler::new(0.5);
        let mut low = [0u8; 16];
        low[8] = 0x7f;
        let mut high = [0u8; 16];
        high[8] = 0x80;
        assert!(half.sample(None, &low));
        assert!(!half.sample(None, &high));
        // The same id, the same answer.
        let id = new_trace_id();
        assert_eq!(half.sample(None, &id), half.sample(None, &id));
        let sampled = (0..10_000)
            .filter(|_| Sampler::new(0.25).sample(None, &new_trace_id()))
            .count();
        assert!(
            (2_000..3_000).contains(&sampled),
            "{sampled} of 10000 at 0.25"
        );
    }

    #[test]
    fn out_of_range_ratios_are_clamped() {
        assert!(!Sampler::new(f64::NAN).roots());
        assert!(!Sampler::new(-1.0).roots());
        assert!(Sampler::new(2.0).sample(None, &[0xff; 16]));
    }
}
