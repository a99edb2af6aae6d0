//! Round trips between sites that the operator declares (`[[round_trip]]` in the topology file), measured
//! on their own network: what a group's Raft timing must cover, where a guess from countries would be too
//! pessimistic (slow failover) or too hopeful (a lease that lapses).
//!
//! A declaration names two sites and the worst round trip between them, in milliseconds. The order of the
//! two sites does not matter; a pair declared twice, a site paired with itself, an unknown site or a round
//! trip outside `1..=ROUND_TRIP_MS_MAX` is refused when the file is read.

use std::collections::BTreeMap;

use crate::site::SiteName;

/// Ten seconds: no link a Raft group can run over is slower, and a larger number is a typo (seconds
/// written as milliseconds, or microseconds).
pub const ROUND_TRIP_MS_MAX: u64 = 10_000;

/// The declared round trips, by unordered pair of sites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundTripTable {
    by_pair: BTreeMap<(SiteName, SiteName), u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoundTripError {
    #[error("a round trip from `{0}` to itself: declare pairs of two sites")]
    SameSite(SiteName),
    #[error("the round trip between `{0}` and `{1}` is declared twice")]
    Duplicate(SiteName, SiteName),
    #[error("a round trip of {ms} ms between `{a}` and `{b}` is outside 1..={ROUND_TRIP_MS_MAX} ms")]
    OutOfRange { a: SiteName, b: SiteName, ms: u64 },
}

impl RoundTripTable {
    /// Declares the round trip between sites `a` and `b` (known sites: the caller checks them against the
    /// topology).
    pub fn declare(&mut self, a: SiteName, b: SiteName, ms: u64) -> Result<(), RoundTripError> {
        if a == b {
            return Err(RoundTripError::SameSite(a));
        }
        if !(1..=ROUND_TRIP_MS_MAX).contains(&ms) {
            return Err(RoundTripError::OutOfRange { a, b, ms });
        }
        let key = ordered(a, b);
        if self.by_pair.contains_key(&key) {
            return Err(RoundTripError::Duplicate(key.0, key.1));
        }
        self.by_pair.insert(key, ms);
        Ok(())
    }

    /// The declared round trip between `a` and `b`, in either order.
    pub fn get(&self, a: &SiteName, b: &SiteName) -> Option<u64> {
        self.by_pair.get(&ordered(a.clone(), b.clone())).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_pair.is_empty()
    }

    /// Every declaration, each pair once, in site-name order.
    pub fn iter(&self) -> impl Iterator<Item = (&SiteName, &SiteName, u64)> {
        self.by_pair.iter().map(|((a, b), ms)| (a, b, *ms))
    }
}

fn ordered(a: SiteName, b: SiteName) -> (SiteName, SiteName) {
    if a <= b { (a, b) } else { (b, a) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(name: &str) -> SiteName {
        SiteName(name.into())
    }

    #[test]
    fn a_pair_is_found_in_either_order_and_declared_once() {
        let mut table = RoundTripTable::default();
        table.declare(site("hamar"), site("dublin-a"), 30).unwrap();
        assert_eq!(table.get(&site("dublin-a"), &site("hamar")), Some(30));
        assert_eq!(table.get(&site("hamar"), &site("dublin-a")), Some(30));
        assert_eq!(table.get(&site("hamar"), &site("ashburn")), None);
        assert_eq!(
            table.declare(site("dublin-a"), site("hamar"), 31),
            Err(RoundTripError::Duplicate(site("dublin-a"), site("hamar")))
        );
        assert_eq!(
            table.get(&site("dublin-a"), &site("hamar")),
            Some(30),
            "the first stands"
        );
    }

    #[test]
    fn nonsense_is_refused() {
        let mut table = RoundTripTable::default();
        assert_eq!(
            table.declare(site("hamar"), site("hamar"), 1),
            Err(RoundTripError::SameSite(site("hamar")))
        );
        for ms in [0, ROUND_TRIP_MS_MAX + 1] {
            assert!(matches!(
                table.declare(site("a"), site("b"), ms),
                Err(RoundTripError::OutOfRange { .. })
            ));
        }
        assert!(table.is_empty());
    }
}
