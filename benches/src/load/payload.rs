//! Deterministic pseudo-random request data, so runs are repeatable and comparable.

/// Distinct payloads cycled through: enough that a server cannot get away with caching one answer,
/// few enough to build up front and keep encoding out of the measured loop.
pub const DISTINCT_PAYLOADS: usize = 4;

/// xorshift64*: tiny, fast and plenty random for feature values and arrival times.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // A zero state would stay zero forever.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in (0, 1]: never 0, so `ln` of it is finite.
    pub fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with the given rate: Poisson-process inter-arrival times.
    pub fn next_exp(&mut self, rate: f64) -> f64 {
        -self.next_unit().ln() / rate
    }
}

/// `rows × features` FP32 values in [0, 100), row-major, the same for the same `seed`.
pub fn features(seed: u64, rows: usize, features: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed + 1);
    (0..rows * features)
        .map(|_| (rng.next_unit() * 100.0) as f32)
        .collect()
}

/// Little-endian bytes of FP32 values: the binary extension's and `raw_input_contents`' layout.
pub fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_deterministic_and_distinct() {
        assert_eq!(features(0, 2, 30), features(0, 2, 30));
        assert_ne!(features(0, 2, 30), features(1, 2, 30));
        assert!(features(3, 4, 30).iter().all(|v| (0.0..100.0).contains(v)));
    }

    #[test]
    fn exponential_mean_matches_rate() {
        let mut rng = Rng::new(7);
        let n = 100_000;
        let mean = (0..n).map(|_| rng.next_exp(2000.0)).sum::<f64>() / n as f64;
        assert!((mean - 1.0 / 2000.0).abs() < 0.02 / 2000.0, "mean {mean}");
    }
}
