//! Client sessions across a range move: the dedup entries the group losing a range carries to the group
//! gaining it (`raft::range_copy` reads them with [`read_sessions`] and writes them with
//! [`Command::MergeSessions`]).
//!
//! **Why.** A client retries a write with the same [`WriteId`] until it learns the outcome, and a group
//! answers a retry from its dedup table instead of applying it again. A write the losing group applied
//! whose answer was lost is retried, after the move, at the gaining group: without the loser's entry it
//! would be applied a second time there (a put overwriting a later writer's value, a compare-and-set
//! answered as a conflict although it took effect).
//!
//! **The merge rule.** The table holds one entry per client session: the last sequence applied and its
//! response. A session's writes are issued one at a time, so its later sequence is its later write,
//! whichever group applied it: a copied entry is taken when its sequence is later than the gainer's. At
//! the same sequence the two are the same write, which only one group applied; the gainer's entry is
//! then kept, unless it is a refusal as not owned (the gainer refused the write's user, the loser
//! applied it). A copied refusal as not owned is never taken: nothing was applied, and the write's retry
//! must be served by the group that owns the user now.
//!
//! The loser keeps its entries (a retry reaching it after the fence is answered from them, before its
//! range check). Every session is carried, not only those of the range's users — an entry does not say
//! which user its write was for — which is harmless: a retry is routed by the map, and any group
//! answering a write from an entry answers what did happen. The cost is one entry per session the loser
//! has seen, read twice (in the bulk copy and after the fence).

use super::*;
use crate::record::{COPY_SESSIONS_MAX, CopiedSession};

/// A bounded run of a group's client sessions, in client-id order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionBatch {
    pub sessions: Vec<CopiedSession>,
    /// Whether the bound stopped the run before the last session.
    pub more: bool,
}

fn client_key(client_id: u64) -> Vec<u8> {
    client_id.to_be_bytes().to_vec()
}

fn client_of(key: &[u8]) -> Result<u64, StateMachineError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StateMachineError::Corrupt {
        location: format!("dedup key {}", hex(key)),
        reason: format!("{} bytes, not a client id's 8", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

fn not_owned(response: &Response) -> bool {
    matches!(response, Response::Rejected(CommandError::NotOwned { .. }))
}

/// The sessions of the view after client `after`, in client-id order, at most `sessions_max` (at least
/// one, when there is one).
pub fn read_sessions(
    view: &impl BackendView,
    after: Option<u64>,
    sessions_max: usize,
) -> Result<SessionBatch, StateMachineError> {
    let after = after.map(client_key);
    let mut batch = SessionBatch {
        sessions: Vec::new(),
        more: false,
    };
    view.scan_after(Table::Dedup, &[], after.as_deref(), &mut |key, sealed| {
        if batch.sessions.len() >= sessions_max.max(1) {
            batch.more = true;
            return Ok(false);
        }
        let entry = super::session_expiry::unseal_dedup(key, sealed)?;
        batch.sessions.push(CopiedSession {
            client_id: client_of(key)?,
            sequence: entry.sequence,
            response: entry.response,
        });
        Ok(true)
    })?;
    Ok(batch)
}

impl<V: BackendView> Applier<'_, V> {
    pub(super) fn merge_sessions(
        &mut self,
        jurisdiction: &str,
        epoch: u64,
        sessions: &[CopiedSession],
    ) -> Result<Response, StateMachineError> {
        let refused = |reason: String| Ok(Response::Rejected(CommandError::OwnershipRefused { reason }));
        if !self
            .incoming()?
            .is_some_and(|incoming| incoming.epoch == epoch && incoming.jurisdiction == jurisdiction)
        {
            return refused(format!(
                "no range of `{jurisdiction}` is incoming at epoch {epoch}: no session may be merged"
            ));
        }
        if sessions.len() > COPY_SESSIONS_MAX {
            return refused(format!(
                "{} copied sessions exceed the bound {COPY_SESSIONS_MAX}",
                sessions.len()
            ));
        }
        let mut taken = 0;
        for copied in sessions {
            if not_owned(&copied.response) {
                continue;
            }
            let key = client_key(copied.client_id);
            let take = match self.get(Table::Dedup, &key)? {
                None => true,
                Some(sealed) => {
                    let ours = super::session_expiry::unseal_dedup(&key, &sealed)?;
                    copied.sequence > ours.sequence
                        || (copied.sequence == ours.sequence && not_owned(&ours.response))
                }
            };
            if take {
                // Active now by this group's clock: the loser's ticks are its own, not comparable with
                // ours, and a session taken over must not expire before its retries can no longer come.
                let entry = DedupEntry {
                    sequence: copied.sequence,
                    response: copied.response.clone(),
                    active_tick: self.session_clock()?,
                };
                let sealed = seal(&key, &entry)?;
                self.put(Table::Dedup, key, sealed);
                taken += 1;
            }
        }
        Ok(Response::SessionsMerged { taken })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, MemBackend};

    fn apply(backend: &mut MemBackend, index: u64, command: &Command) -> Response {
        let view = backend.view().unwrap();
        let mut applier = Applier::new(&view);
        let response = applier.apply(index, command).unwrap();
        backend.commit(applier.finish()).unwrap();
        response
    }

    fn ownership(epoch: u64, ranges: Vec<(u64, u64)>) -> Ownership {
        Ownership {
            jurisdiction: "eu".into(),
            epoch,
            ranges,
        }
    }

    const HALF: u64 = 1 << 63;

    /// A user of the lower half (the gainer's own) and one of the upper half (incoming).
    fn user(lower: bool) -> String {
        (0..)
            .map(|n| format!("user-{n}"))
            .find(|user| (wire::routing::range_position(user) < HALF) == lower)
            .unwrap()
    }

    fn put(client_id: u64, sequence: u64, user: &str) -> Command {
        Command::Put {
            write: WriteId { client_id, sequence },
            key: RecordKey::new("eu", user, "r"),
            value: format!("{client_id}/{sequence}").into_bytes(),
        }
    }

    /// A gainer owning the lower half at epoch 1 and receiving the upper half at epoch 2.
    fn gainer() -> MemBackend {
        let mut backend = MemBackend::new();
        apply(
            &mut backend,
            1,
            &Command::SetOwnership(ownership(1, vec![(0, HALF - 1)])),
        );
        apply(
            &mut backend,
            2,
            &Command::Receive(ownership(2, vec![(HALF, u64::MAX)])),
        );
        backend
    }

    fn merge(sessions: Vec<CopiedSession>) -> Command {
        Command::MergeSessions {
            jurisdiction: "eu".into(),
            epoch: 2,
            sessions,
        }
    }

    fn session(client_id: u64, sequence: u64, response: Response) -> CopiedSession {
        CopiedSession {
            client_id,
            sequence,
            response,
        }
    }

    #[test]
    fn a_write_applied_by_the_loser_and_retried_at_the_gainer_is_answered_not_applied_again() {
        let mut loser = MemBackend::new();
        let moving = user(false);
        let first = apply(&mut loser, 1, &put(7, 3, &moving));
        assert_eq!(first, Response::Written { revision: 1 });
        let copied = read_sessions(&loser.view().unwrap(), None, 16).unwrap();
        assert_eq!(copied.sessions, [session(7, 3, first.clone())]);
        assert!(!copied.more);

        let mut gainer = gainer();
        let merged = apply(&mut gainer, 3, &merge(copied.sessions));
        assert_eq!(merged, Response::SessionsMerged { taken: 1 });
        apply(
            &mut gainer,
            4,
            &Command::SetOwnership(ownership(2, vec![(0, u64::MAX)])),
        );
        // The retry is answered with the loser's response and writes nothing: the key stays absent here
        // (the record itself travels by `CopyIn`, not exercised here).
        assert_eq!(apply(&mut gainer, 5, &put(7, 3, &moving)), first);
        let key = RecordKey::new("eu", &moving, "r");
        assert_eq!(read_record(&gainer.view().unwrap(), &key).unwrap(), None);
        // The session's next write is applied as usual.
        assert_eq!(
            apply(&mut gainer, 6, &put(7, 4, &moving)),
            Response::Written { revision: 6 }
        );
    }

    #[test]
    fn the_later_sequence_wins_and_a_refusal_as_not_owned_is_never_carried() {
        let mut gainer = gainer();
        let own = user(true);
        let incoming = user(false);
        apply(&mut gainer, 3, &put(1, 5, &own)); // the gainer's own, later than the loser's 4
        apply(&mut gainer, 4, &put(2, 1, &own)); // earlier than the loser's 2
        let refused_here = apply(&mut gainer, 5, &put(3, 9, &incoming)); // refused: incoming only
        assert!(not_owned(&refused_here), "{refused_here:?}");
        let refusal = Response::Rejected(CommandError::NotOwned {
            jurisdiction: "eu".into(),
            epoch: 2,
            position: 1,
        });
        let merged = apply(
            &mut gainer,
            6,
            &merge(vec![
                session(1, 4, Response::Written { revision: 40 }),
                session(2, 2, Response::Written { revision: 41 }),
                session(3, 9, Response::Written { revision: 42 }),
                session(4, 1, refusal),
            ]),
        );
        assert_eq!(merged, Response::SessionsMerged { taken: 2 });
        let held = read_sessions(&gainer.view().unwrap(), None, 16).unwrap().sessions;
        assert_eq!(
            held,
            [
                session(1, 5, Response::Written { revision: 3 }),
                session(2, 2, Response::Written { revision: 41 }),
                session(3, 9, Response::Written { revision: 42 }),
            ]
        );
        // Merging the same again is a retry: nothing more is taken.
        let again = merge(vec![session(2, 2, Response::Written { revision: 41 })]);
        assert_eq!(
            apply(&mut gainer, 7, &again),
            Response::SessionsMerged { taken: 0 }
        );
    }

    #[test]
    fn sessions_are_read_in_bounded_batches_and_merged_only_while_receiving() {
        let mut loser = MemBackend::new();
        for client in 0..5 {
            apply(&mut loser, client + 1, &put(client, 1, &user(true)));
        }
        let view = loser.view().unwrap();
        let first = read_sessions(&view, None, 2).unwrap();
        assert_eq!(first.sessions.len(), 2);
        assert!(first.more);
        let rest = read_sessions(&view, Some(first.sessions[1].client_id), 16).unwrap();
        assert_eq!(
            rest.sessions.iter().map(|s| s.client_id).collect::<Vec<_>>(),
            [2, 3, 4]
        );
        assert!(!rest.more);

        let mut idle = MemBackend::new();
        let refused = apply(&mut idle, 1, &merge(first.sessions.clone()));
        assert!(
            matches!(refused, Response::Rejected(CommandError::OwnershipRefused { .. })),
            "{refused:?}"
        );
        let too_many = vec![session(1, 1, Response::Empty); COPY_SESSIONS_MAX + 1];
        let refused = apply(&mut gainer(), 3, &merge(too_many));
        assert!(
            matches!(refused, Response::Rejected(CommandError::OwnershipRefused { .. })),
            "{refused:?}"
        );
    }
}
