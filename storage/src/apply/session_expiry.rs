//! Client sessions expire: the dedup table forgets a session idle for longer than any retry of its last
//! write could still arrive (the Raft dissertation's client sessions, section 6.3).
//!
//! **Why.** A group keeps one dedup entry per client session it has applied a write of, so that a retry
//! is answered from the table instead of applied twice. A client makes a session per concurrent write and
//! a new process makes new ones, so without expiry the table grows with every client process ever run.
//!
//! **When it is safe.** Dropping a session's entry is safe once no retry of its last write can still
//! arrive: a client retries a call only until the call's deadline (seconds), so a session idle for an
//! hour has no retry left in flight. Replicas must drop the same sessions at the same point of the log,
//! so the decision may not read a clock. The group's leader proposes [`Command::SessionTick`] once per
//! `raft::session_clock::SESSION_TICK_EVERY` (a minute) it has led, counting from when it became leader;
//! every replica counts the ticks (the *session clock*, in the meta table) and stamps each session's entry
//! with the count when it writes it. A session idle for more than [`SESSION_IDLE_TICKS_MAX`] ticks is
//! dropped. Ticks are counted only while some leader leads, and each leader starts its count afresh, so
//! the ticks between a write and its session's expiry span at least as much real time as they say (an
//! entry of a deposed leader that a new one commits was proposed before the new leader's election); a
//! group without a leader, or whose leaders keep changing, only expires later.
//!
//! **A bounded sweep.** Each tick looks at [`SWEEP_SESSIONS_MAX`] sessions after the last one the
//! previous tick looked at (the cursor is in the meta table), wrapping round at the end, so a tick costs
//! the same whatever the table's size; a table of `n` sessions is swept once every `n /
//! SWEEP_SESSIONS_MAX` ticks, which delays an expiry and never hastens one. The sweep reads the table as
//! the batch being applied leaves it (the view with the batch's changes over it), so replicas that split
//! the log into different batches sweep the same sessions.
//!
//! **Entries written before expiry existed** carry no tick; they are read as written at tick 0, which
//! expires them [`SESSION_IDLE_TICKS_MAX`] ticks after the clock first ticked, as idle as any.

use std::ops::Bound;

use super::*;

/// Meta-table key of the session clock: the ticks this group has applied (a u64, 0 when absent).
pub const META_SESSION_CLOCK: &[u8] = b"session_clock";
/// Meta-table key of the dedup key the last sweep stopped after (absent: the next starts at the table's
/// start).
pub const META_SESSION_SWEEP: &[u8] = b"session_sweep";
/// A session not written for more ticks than this is dropped: an hour at a tick a minute, against call
/// deadlines of seconds.
pub const SESSION_IDLE_TICKS_MAX: u64 = 60;
/// Sessions one tick looks at.
pub const SWEEP_SESSIONS_MAX: usize = 1024;

/// A dedup entry as written before sessions expired: no tick.
#[derive(Deserialize)]
struct DedupEntryWithoutTick {
    sequence: u64,
    response: Response,
}

/// Reads a dedup entry, of either format: one written before sessions expired is read as written at tick 0.
/// A value of neither format is corruption, named by the current format's error.
pub(super) fn unseal_dedup(key: &[u8], sealed: &[u8]) -> Result<DedupEntry, StateMachineError> {
    match unseal::<DedupEntry>(Table::Dedup, key, sealed) {
        Ok(entry) => Ok(entry),
        Err(current) => match codec::unseal::<DedupEntryWithoutTick>(key, sealed) {
            Ok(old) => Ok(DedupEntry {
                sequence: old.sequence,
                response: old.response,
                active_tick: 0,
            }),
            Err(_) => Err(current),
        },
    }
}

impl<V: BackendView> Applier<'_, V> {
    /// The session clock as of the batch so far.
    pub(super) fn session_clock(&mut self) -> Result<u64, StateMachineError> {
        if let Some(clock) = self.session_clock {
            return Ok(clock);
        }
        let clock = match self.get(Table::Meta, META_SESSION_CLOCK)? {
            Some(sealed) => decode_u64(&unseal::<Vec<u8>>(Table::Meta, META_SESSION_CLOCK, &sealed)?)?,
            None => 0,
        };
        self.session_clock = Some(clock);
        Ok(clock)
    }

    /// Applies [`Command::SessionTick`]: the clock one tick on, then a sweep.
    pub(super) fn tick_session_clock(&mut self) -> Result<Response, StateMachineError> {
        // A u64 of minutes does not overflow; saturating keeps a replica applying if it ever did.
        let clock = self.session_clock()?.saturating_add(1);
        self.session_clock = Some(clock);
        let encoded = codec::encode(&clock).map_err(encode_error)?;
        self.set_meta(META_SESSION_CLOCK, &encoded)?;
        let expired = self.sweep_sessions(clock)?;
        Ok(Response::SessionClock { clock, expired })
    }

    /// Drops the idle sessions among the next [`SWEEP_SESSIONS_MAX`] after the sweep's cursor, and moves
    /// the cursor past them (or back to the start, at the table's end). Returns how many it dropped.
    fn sweep_sessions(&mut self, clock: u64) -> Result<u64, StateMachineError> {
        let after = match self.get(Table::Meta, META_SESSION_SWEEP)? {
            Some(sealed) => Some(unseal::<Vec<u8>>(Table::Meta, META_SESSION_SWEEP, &sealed)?),
            None => None,
        };
        let (sessions, at_end) = self.sessions_after(after.as_deref(), SWEEP_SESSIONS_MAX)?;
        let mut expired = 0;
        for (key, sealed) in &sessions {
            let entry = unseal_dedup(key, sealed)?;
            // Every entry is stamped with the clock of its batch, which only grows: one from the future
            // was not written by this state machine.
            let Some(idle_ticks) = clock.checked_sub(entry.active_tick) else {
                return Err(StateMachineError::Corrupt {
                    location: format!("table dedup key {}", hex(key)),
                    reason: format!(
                        "written at session tick {}, after the session clock's {clock}",
                        entry.active_tick
                    ),
                });
            };
            if idle_ticks > SESSION_IDLE_TICKS_MAX {
                self.batch.changes.insert((Table::Dedup, key.clone()), None);
                expired += 1;
            }
        }
        match sessions.last() {
            Some((last, _)) if !at_end => {
                let last = last.clone();
                self.set_meta(META_SESSION_SWEEP, &last)?;
            }
            _ => {
                self.batch
                    .changes
                    .insert((Table::Meta, META_SESSION_SWEEP.to_vec()), None);
            }
        }
        Ok(expired)
    }

    /// The first `limit` sessions after `after`, as the batch so far leaves the table (the view with the
    /// batch's changes over it), and whether they are the last ones.
    #[allow(clippy::type_complexity)]
    fn sessions_after(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), StateMachineError> {
        let lower = match after {
            Some(after) => Bound::Excluded((Table::Dedup, after.to_vec())),
            None => Bound::Included((Table::Dedup, Vec::new())),
        };
        let pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self
            .batch
            .changes
            .range((lower, Bound::Unbounded))
            .take_while(|((table, _), _)| *table == Table::Dedup)
            .map(|((_, key), change)| (key, change))
            .collect();
        // Enough of the view that `limit` sessions remain whatever the batch deleted among them.
        let wanted = limit + pending.len();
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        let mut view_at_end = true;
        self.view
            .scan_after(Table::Dedup, &[], after, &mut |key, sealed| {
                if merged.len() >= wanted {
                    view_at_end = false;
                    return Ok(false);
                }
                merged.insert(key.to_vec(), Some(sealed.to_vec()));
                Ok(true)
            })?;
        // The batch's changes up to the last key read from the view (past it, the view was not read).
        let horizon = if view_at_end {
            None
        } else {
            merged.keys().next_back().cloned()
        };
        for (key, change) in pending {
            if horizon.as_ref().is_none_or(|horizon| key <= horizon) {
                merged.insert(key.clone(), change.clone());
            }
        }
        let mut live: Vec<(Vec<u8>, Vec<u8>)> = merged
            .into_iter()
            .filter_map(|(key, sealed)| sealed.map(|sealed| (key, sealed)))
            .collect();
        let at_end = view_at_end && live.len() <= limit;
        live.truncate(limit);
        Ok((live, at_end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::backend::MemBackend;

    /// Applies `commands` from log index `index` on, `per_batch` to a batch (as a replica may split them).
    fn apply_in_batches(
        backend: &mut MemBackend,
        index: u64,
        commands: &[Command],
        per_batch: usize,
    ) -> Vec<Response> {
        let mut responses = Vec::new();
        for (n, batch) in commands.chunks(per_batch).enumerate() {
            let view = backend.view().unwrap();
            let mut applier = Applier::new(&view);
            for (i, command) in batch.iter().enumerate() {
                let at = index + (n * per_batch + i) as u64;
                responses.push(applier.apply(at, command).unwrap());
            }
            backend.commit(applier.finish()).unwrap();
        }
        responses
    }

    fn put(client_id: u64, sequence: u64) -> Command {
        Command::Put {
            write: WriteId { client_id, sequence },
            key: RecordKey::new("eu", format!("user-{client_id}"), "r"),
            value: format!("{client_id}/{sequence}").into_bytes(),
        }
    }

    fn ticks(n: u64) -> Vec<Command> {
        (0..n).map(|_| Command::SessionTick).collect()
    }

    fn sessions(backend: &MemBackend) -> Vec<u64> {
        read_sessions(&backend.view().unwrap(), None, usize::MAX)
            .unwrap()
            .sessions
            .iter()
            .map(|session| session.client_id)
            .collect()
    }

    #[test]
    fn a_session_idle_past_the_bound_is_dropped_and_an_active_one_kept() {
        let mut backend = MemBackend::new();
        apply_in_batches(&mut backend, 1, &[put(1, 1), put(2, 1)], 1);
        // Client 2 writes again half-way: it is active, client 1 is not.
        apply_in_batches(&mut backend, 3, &ticks(SESSION_IDLE_TICKS_MAX / 2), 1);
        apply_in_batches(&mut backend, 100, &[put(2, 2)], 1);
        apply_in_batches(&mut backend, 101, &ticks(SESSION_IDLE_TICKS_MAX / 2), 1);
        assert_eq!(sessions(&backend), vec![1, 2], "idle for exactly the bound: kept");
        let responses = apply_in_batches(&mut backend, 200, &ticks(1), 1);
        assert_eq!(
            responses,
            vec![Response::SessionClock {
                clock: SESSION_IDLE_TICKS_MAX + 1,
                expired: 1
            }]
        );
        assert_eq!(sessions(&backend), vec![2]);
        // A retry of client 2's last write is still answered from its entry, not applied again.
        let retry = apply_in_batches(&mut backend, 300, &[put(2, 2)], 1);
        assert_eq!(retry, vec![Response::Written { revision: 100 }]);
    }

    #[test]
    fn replicas_that_batch_the_log_differently_drop_the_same_sessions() {
        // More sessions than one sweep looks at, some written between the ticks, each write and tick in
        // one log; applied one entry per batch, seven per batch, and all in one batch.
        let mut log = Vec::new();
        for client_id in 0..(SWEEP_SESSIONS_MAX as u64 * 2 + 100) {
            log.push(put(client_id, 1));
        }
        log.extend(ticks(SESSION_IDLE_TICKS_MAX - 1));
        for client_id in (0..SWEEP_SESSIONS_MAX as u64 * 2).step_by(3) {
            log.push(put(client_id, 2));
        }
        log.extend(ticks(5));
        log.push(put(999_999, 1));
        log.extend(ticks(3));
        let mut outcomes = Vec::new();
        for per_batch in [1, 7, log.len()] {
            let mut backend = MemBackend::new();
            let responses = apply_in_batches(&mut backend, 1, &log, per_batch);
            outcomes.push((responses, super::super::every_item(&backend.view().unwrap())));
        }
        let expired: u64 = outcomes[0]
            .0
            .iter()
            .map(|response| match response {
                Response::SessionClock { expired, .. } => *expired,
                _ => 0,
            })
            .sum();
        assert!(expired > 0, "the sweeps dropped some idle sessions");
        assert_eq!(outcomes[0], outcomes[1], "one entry per batch against seven");
        assert_eq!(outcomes[0], outcomes[2], "one entry per batch against all in one");
    }

    #[test]
    fn the_sweep_goes_round_the_table_a_bounded_run_at_a_time() {
        let mut backend = MemBackend::new();
        let clients = SWEEP_SESSIONS_MAX as u64 * 2 + 10;
        let writes: Vec<Command> = (0..clients).map(|client_id| put(client_id, 1)).collect();
        apply_in_batches(&mut backend, 1, &writes, 500);
        // Every session idle past the bound: each tick from here drops at most one sweep's worth.
        let responses = apply_in_batches(&mut backend, 10_000, &ticks(SESSION_IDLE_TICKS_MAX + 3), 1);
        let expired: Vec<u64> = responses
            .iter()
            .map(|response| match response {
                Response::SessionClock { expired, .. } => *expired,
                other => panic!("a tick answered {other:?}"),
            })
            .collect();
        let last = &expired[expired.len() - 3..];
        assert_eq!(last, [SWEEP_SESSIONS_MAX as u64, SWEEP_SESSIONS_MAX as u64, 10]);
        assert!(sessions(&backend).is_empty());
        assert!(
            backend
                .view()
                .unwrap()
                .get(Table::Meta, META_SESSION_SWEEP)
                .unwrap()
                .is_none(),
            "at the table's end the cursor goes back to the start"
        );
    }

    #[test]
    fn an_entry_written_before_sessions_expired_is_read_as_written_at_tick_zero() {
        #[derive(Serialize)]
        struct Old {
            sequence: u64,
            response: Response,
        }
        let key = 7u64.to_be_bytes();
        let old = Old {
            sequence: 3,
            response: Response::Written { revision: 9 },
        };
        let sealed = codec::seal(&key, &old).unwrap();
        let entry = unseal_dedup(&key, &sealed).unwrap();
        assert_eq!(
            entry,
            DedupEntry {
                sequence: 3,
                response: Response::Written { revision: 9 },
                active_tick: 0
            }
        );
        let damaged = {
            let mut bytes = sealed.clone();
            let last = bytes.len() - 1;
            bytes[last] ^= 0xff;
            bytes
        };
        assert!(matches!(
            unseal_dedup(&key, &damaged),
            Err(StateMachineError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_session_stamped_ahead_of_the_clock_is_named_as_corrupt_not_a_panic() {
        let mut backend = MemBackend::new();
        let key = 5u64.to_be_bytes().to_vec();
        let entry = DedupEntry {
            sequence: 1,
            response: Response::Written { revision: 1 },
            active_tick: 40,
        };
        let mut batch = WriteBatch::default();
        batch.changes.insert(
            (Table::Dedup, key.clone()),
            Some(codec::seal(&key, &entry).unwrap()),
        );
        backend.commit(batch).unwrap();
        let view = backend.view().unwrap();
        let mut applier = Applier::new(&view);
        let error = applier.apply(1, &Command::SessionTick).unwrap_err();
        assert!(
            error.to_string().contains("after the session clock's 1"),
            "{error}"
        );
    }
}
