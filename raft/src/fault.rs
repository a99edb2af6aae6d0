//! A fault a node injects into its own Raft traffic when an operator asks (`domicile drill`): for a
//! bounded time it stops exchanging peer messages with some peers, or with all of them, in both
//! directions — what it would send is dropped before it leaves ([`crate::network`], [`crate::host::Host::ask_peer`]),
//! what arrives is refused before it is served ([`crate::service::route_envelope`]).
//!
//! The isolation heals by itself at its deadline, whatever becomes of whoever asked for it: the deadline is
//! checked on every use, against the runtime's clock (openraft's type config, so the simulator's time
//! would govern it too), and no timer task has to survive for it to end. A deadline is at most
//! [`ISOLATION_MAX`] away.
//!
//! Only Raft traffic between nodes is cut: client calls still reach the node (a drill's own workload must
//! reach it to see what a client would), and so does its admin endpoint. A real outage (a process stopped,
//! a host gone, a link down) cuts those too; `domicile drill --fault-command` runs one.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use placement::NodeId;

/// The longest isolation a node accepts: a forgotten fault ends within this.
pub const ISOLATION_MAX: Duration = Duration::from_secs(10 * 60);

/// Which peers an isolated node stops exchanging Raft traffic with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsolatedFrom {
    /// Every peer.
    All,
    /// These peers only; the others are still reached.
    Peers(BTreeSet<NodeId>),
}

impl IsolatedFrom {
    pub fn includes(&self, peer: NodeId) -> bool {
        match self {
            IsolatedFrom::All => true,
            IsolatedFrom::Peers(peers) => peers.contains(&peer),
        }
    }
}

impl std::fmt::Display for IsolatedFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IsolatedFrom::All => write!(f, "every peer"),
            IsolatedFrom::Peers(peers) => {
                let names: Vec<String> = peers.iter().map(ToString::to_string).collect();
                write!(f, "{}", names.join(", "))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("an isolation lasts at least 1 ms (asked for {0:?})")]
    TooShort(Duration),
    #[error("an isolation lasts at most {ISOLATION_MAX:?}, so a forgotten one ends (asked for {0:?})")]
    TooLong(Duration),
    #[error("an isolation from no peer isolates nothing: name peers, or all")]
    NoPeers,
}

/// An isolation in force: from whom, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveIsolation<I> {
    pub from: IsolatedFrom,
    pub until: I,
}

/// A node's isolation, if any, shared by all its groups and its front door. `I` is the runtime's instant.
pub struct Isolation<I> {
    active: Mutex<Option<ActiveIsolation<I>>>,
    /// Whether `active` holds an isolation: written under its lock, read without it, so a node with none
    /// (nearly always) pays one atomic load per message.
    armed: AtomicBool,
    /// Set when an isolation ended at its deadline, until [`Isolation::take_expired`] reports it.
    expired: Mutex<Option<ActiveIsolation<I>>>,
    /// Peer messages dropped or refused because of an isolation, since the node started.
    dropped: AtomicU64,
}

impl<I: openraft::Instant> Default for Isolation<I> {
    fn default() -> Self {
        Isolation {
            active: Mutex::new(None),
            armed: AtomicBool::new(false),
            expired: Mutex::new(None),
            dropped: AtomicU64::new(0),
        }
    }
}

impl<I: openraft::Instant> Isolation<I> {
    /// Isolates the node from `from` for `duration` from `now`, replacing any isolation in force.
    pub fn isolate(
        &self,
        from: IsolatedFrom,
        duration: Duration,
        now: I,
    ) -> Result<ActiveIsolation<I>, FaultError> {
        if duration < Duration::from_millis(1) {
            return Err(FaultError::TooShort(duration));
        }
        if duration > ISOLATION_MAX {
            return Err(FaultError::TooLong(duration));
        }
        if from == IsolatedFrom::Peers(BTreeSet::new()) {
            return Err(FaultError::NoPeers);
        }
        let isolation = ActiveIsolation {
            from,
            until: now + duration,
        };
        let mut active = self.active.lock().expect("isolation lock");
        *active = Some(isolation.clone());
        self.armed.store(true, Ordering::Release);
        Ok(isolation)
    }

    /// Ends the isolation in force now; returns it, or `None` if there was none.
    pub fn heal(&self, now: I) -> Option<ActiveIsolation<I>> {
        self.current(now);
        let mut active = self.active.lock().expect("isolation lock");
        self.armed.store(false, Ordering::Release);
        active.take()
    }

    /// The isolation in force at `now`, if any. One whose deadline has passed ends here.
    pub fn current(&self, now: I) -> Option<ActiveIsolation<I>> {
        let mut active = self.active.lock().expect("isolation lock");
        if active.as_ref().is_some_and(|isolation| now >= isolation.until) {
            *self.expired.lock().expect("isolation lock") = active.take();
            self.armed.store(false, Ordering::Release);
        }
        active.clone()
    }

    /// Whether a Raft message to or from `peer` at `now` must be dropped; a dropped message is counted.
    pub fn blocks(&self, peer: NodeId, now: I) -> bool {
        if !self.armed.load(Ordering::Acquire) {
            return false;
        }
        let blocked = self
            .current(now)
            .is_some_and(|isolation| isolation.from.includes(peer));
        if blocked {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        blocked
    }

    /// The isolation that last ended at its deadline, once: for the node to log (and count) that it healed.
    pub fn take_expired(&self, now: I) -> Option<ActiveIsolation<I>> {
        self.current(now);
        self.expired.lock().expect("isolation lock").take()
    }

    /// Peer messages dropped or refused by isolations since the node started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Why an isolated node refuses a peer's message (the sender sees the peer as unreachable).
pub fn refusal_reason(me: NodeId) -> String {
    format!(
        "{me} is isolated from this peer by an operator's fault injection (a drill); it heals at its deadline"
    )
}

#[cfg(test)]
mod tests {
    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::config::TokioConfig;

    fn peers(ids: &[u64]) -> IsolatedFrom {
        IsolatedFrom::Peers(ids.iter().copied().map(NodeId).collect())
    }

    #[test]
    fn an_isolation_blocks_the_named_peers_until_its_deadline_and_then_heals_by_itself() {
        let isolation = Isolation::default();
        let now = TokioConfig::now();
        isolation
            .isolate(peers(&[2, 3]), Duration::from_secs(5), now)
            .unwrap();
        assert!(isolation.blocks(NodeId(2), now));
        assert!(isolation.blocks(NodeId(3), now + Duration::from_millis(4999)));
        assert!(
            !isolation.blocks(NodeId(4), now),
            "a peer not named is still reached"
        );
        assert_eq!(isolation.dropped(), 2);
        assert_eq!(isolation.take_expired(now), None, "nothing has expired yet");

        let later = now + Duration::from_secs(5);
        assert!(
            !isolation.blocks(NodeId(2), later),
            "healed at the deadline, with no one asking"
        );
        assert_eq!(isolation.current(later), None);
        let expired = isolation.take_expired(later).expect("the expiry is reported");
        assert_eq!(expired.from, peers(&[2, 3]));
        assert_eq!(isolation.take_expired(later), None, "and reported once");
    }

    #[test]
    fn an_isolation_from_all_blocks_every_peer_and_a_heal_ends_it_at_once() {
        let isolation = Isolation::default();
        let now = TokioConfig::now();
        isolation
            .isolate(IsolatedFrom::All, Duration::from_secs(60), now)
            .unwrap();
        assert!(isolation.blocks(NodeId(1), now) && isolation.blocks(NodeId(9), now));
        let healed = isolation.heal(now).expect("an isolation was in force");
        assert_eq!(healed.from, IsolatedFrom::All);
        assert!(!isolation.blocks(NodeId(9), now));
        assert_eq!(isolation.heal(now), None, "healing twice is harmless");
        assert_eq!(
            isolation.take_expired(now),
            None,
            "healed on request, not at the deadline"
        );
    }

    #[test]
    fn a_new_isolation_replaces_the_one_in_force() {
        let isolation = Isolation::default();
        let now = TokioConfig::now();
        isolation
            .isolate(IsolatedFrom::All, Duration::from_secs(60), now)
            .unwrap();
        isolation
            .isolate(peers(&[3]), Duration::from_secs(1), now)
            .unwrap();
        assert!(!isolation.blocks(NodeId(2), now));
        assert!(!isolation.blocks(NodeId(3), now + Duration::from_secs(2)));
    }

    #[test]
    fn bounds_are_checked_before_anything_is_isolated() {
        let isolation = Isolation::default();
        let now = TokioConfig::now();
        assert_eq!(
            isolation.isolate(IsolatedFrom::All, ISOLATION_MAX + Duration::from_millis(1), now),
            Err(FaultError::TooLong(ISOLATION_MAX + Duration::from_millis(1)))
        );
        assert_eq!(
            isolation.isolate(IsolatedFrom::All, Duration::ZERO, now),
            Err(FaultError::TooShort(Duration::ZERO))
        );
        assert_eq!(
            isolation.isolate(peers(&[]), Duration::from_secs(1), now),
            Err(FaultError::NoPeers)
        );
        assert_eq!(isolation.current(now), None);
        assert!(isolation.isolate(IsolatedFrom::All, ISOLATION_MAX, now).is_ok());
    }
}
