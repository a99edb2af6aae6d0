//! The simulator's own seeded randomness: SplitMix64, a separate stream from the runtime's.
//!
//! Every fault, latency and workload choice is drawn from one of these, so a seed fixes the run.

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, fast, and good enough for fault schedules.
#[derive(Clone, Debug)]
pub struct Prng(u64);

impl Prng {
    pub fn new(seed: u64) -> Prng {
        Prng(seed ^ 0x05ee_dd01_c11e)
    }

    /// An independent stream for a sub-component (`salt` names it), so adding draws in one part of
    /// the world does not shift every other part's choices.
    pub fn fork(&mut self, salt: u64) -> Prng {
        Prng(self.next_u64() ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "can't draw below zero");
        self.next_u64() % n
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "empty range {low}..={high}");
        low + self.below(high - low + 1)
    }

    /// True with probability `per_million` / 1,000,000.
    pub fn chance(&mut self, per_million: u64) -> bool {
        self.below(1_000_000) < per_million
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// FNV-1a, 64-bit: the trace hash. Stable across versions and platforms by construction.
pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_and_forks_differ() {
        let (mut a, mut b) = (Prng::new(7), Prng::new(7));
        let drawn: Vec<u64> = (0..5).map(|_| a.below(1000)).collect();
        assert_eq!(drawn, (0..5).map(|_| b.below(1000)).collect::<Vec<_>>());
        let (mut x, mut y) = (a.fork(1), a.fork(2));
        assert_ne!(x.next_u64(), y.next_u64());
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
