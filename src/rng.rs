//! SplitMix64 (Steele, Lea & Flood 2014): the crate's one small seeded generator, for what must
//! be a pure function of a seed (the training data order, so a resumed run replays it; the demo's
//! task and initial weights; random benchmark weights and prompts). Not for sampling tokens: the
//! sampler has its own counter-based hash keyed by (seed, request, step).

/// The generator's state; `SplitMix64(seed)` starts a stream.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    #[allow(clippy::should_implement_trait)] // an endless stream, not an Iterator's Option
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform on [0, 1), 24 bits (every value exact in f32).
    pub fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }

    /// Uniform on 0..n (n > 0; the modulo bias is below 2⁻⁴⁰ for the n used here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_sequence() {
        // The first outputs for seed 1234567 from the authors' reference implementation
        // (also quoted by Vigna's xoshiro page as the seeding generator's test values).
        let mut r = SplitMix64(1234567);
        let want = [
            6457827717110365317u64,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        for w in want {
            assert_eq!(r.next(), w);
        }
    }
}
