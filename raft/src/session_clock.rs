//! The session clock's ticks: each group this node leads is sent a [`Command::SessionTick`] once per
//! period it has led, by which every replica alike expires idle client sessions.
//!
//! Why a tick and not a time: replicas must drop the same sessions at the same point of the log, so the
//! decision is taken from the log alone (`storage::apply::session_expiry` says why that is safe). What
//! the leader contributes is that ticks are never closer than the period in real time: a leader proposes
//! its first tick a whole period after it was first seen leading in its term, and each next one a period
//! after the last, one at a time; a leader deposed unawares can commit nothing after its successor's
//! election. Ticks a leader missed (a proposal that failed, a group without a leader) are not made up,
//! so sessions expire later than the period times the ticks say, with one exception: a monotonic clock
//! that leaps forward (a paused or migrated VM) brings that leader's next tick forward by at most one
//! period, which an idle bound of 60 periods against call deadlines of seconds absorbs many times over.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use openraft::Instant as _;
use openraft::alias::InstantOf;
use openraft::type_config::TypeConfigExt;
use openraft::vote::{RaftLeaderId, RaftVote};
use placement::GroupId;
use storage::{Command, Response};

use crate::config::GroupConfig;
use crate::host::{Host, HostError};
use crate::stores::Stores;
use crate::transport::Transport;

/// The period of the session clock: with `storage::apply::SESSION_IDLE_TICKS_MAX` ticks, a session idle
/// for an hour expires.
pub const SESSION_TICK_EVERY: Duration = Duration::from_secs(60);

/// The ticks of the groups one host leads. Remembers, per group led here, the term and when its last
/// tick was proposed (or, before the first, when this node was first seen leading it).
pub struct SessionClock<C: GroupConfig> {
    every: Duration,
    last_tick: Mutex<BTreeMap<GroupId, (u64, InstantOf<C>)>>,
}

impl<C: GroupConfig> SessionClock<C> {
    pub fn new(every: Duration) -> SessionClock<C> {
        assert!(
            !every.is_zero(),
            "a session clock ticks at a period longer than zero"
        );
        SessionClock {
            every,
            last_tick: Mutex::default(),
        }
    }

    /// One round over every group the host runs, in name order: the groups that were due a tick, each
    /// with what its tick answered (the clock and the sessions it expired) or why it failed.
    pub async fn round<T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
    ) -> BTreeMap<GroupId, Result<Response, HostError>> {
        let mut ticked = BTreeMap::new();
        for group in host.hosted_groups() {
            match self.tick_if_due(host, &group).await {
                Ok(None) => {}
                Ok(Some(response)) => {
                    ticked.insert(group, Ok(response));
                }
                Err(error) => {
                    ticked.insert(group, Err(error));
                }
            }
        }
        ticked
    }

    /// Proposes the group's tick if this node leads it and a period has passed since its last one (or
    /// since it was first seen leading in this term).
    async fn tick_if_due<T: Transport, S: Stores<C>>(
        &self,
        host: &Host<C, T, S>,
        group: &GroupId,
    ) -> Result<Option<Response>, HostError> {
        let me = host.identity().node;
        let metrics = host.raft_metrics(group)?;
        if metrics.current_leader != Some(me.0) {
            self.last_tick.lock().expect("session clock lock").remove(group);
            return Ok(None);
        }
        let term = metrics.vote.leader_id().term();
        let now = C::now();
        {
            let mut last_tick = self.last_tick.lock().expect("session clock lock");
            let entry = last_tick.entry(group.clone()).or_insert((term, now));
            if entry.0 != term {
                *entry = (term, now);
            }
            if now.saturating_duration_since(entry.1) < self.every {
                return Ok(None);
            }
            // Taken now, before the proposal: a tick whose outcome is unknown (it may still commit) is
            // followed by the next one a whole period later, never sooner.
            entry.1 = now;
        }
        host.write(group, Command::SessionTick).await.map(Some)
    }
}
