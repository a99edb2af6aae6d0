//! AppendEntries bounded in bytes, not only in entries.
//!
//! openraft bounds a replication request by entry count (`max_payload_entries`, 300), never by size, and
//! a peer message may not exceed the link's `message_bytes_max` (16 MiB). With values up to
//! `wire::record::VALUE_BYTES_MAX` (1 MiB), 300 entries of more than ~56 KiB each make a request the
//! link refuses to send: openraft would back off and retry the same request for ever, and the follower
//! would never catch up. Lowering the entry count instead would cut every small-value batch to a
//! handful of entries per round trip.
//!
//! So a request whose encoding is larger than [`APPEND_BYTES_MAX`] is cut into consecutive parts, each
//! within it (an entry larger than the bound alone goes alone: the link's own bound still refuses what
//! no part can carry), and the parts are sent in order, each one's `prev_log_id` the last entry of the
//! part before. The follower appends them as it would the whole; the combined answer is the answer to
//! the whole request ([`combine`]). This is plain Raft — a leader may send any prefix of what follows
//! `prev_log_id` — and openraft's `PartialSuccess` exists for it.

use std::future::Future;

use openraft::RaftTypeConfig;
use openraft::alias::LogIdOf;
use openraft::entry::RaftEntry;
use openraft::error::{NetworkError, RPCError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};

/// The most one AppendEntries may encode to before it is cut: a quarter of the link's 16 MiB message
/// bound, which leaves room for the envelope and keeps one request from holding a stream for long.
pub const APPEND_BYTES_MAX: usize = 4 << 20;

/// Bytes allowed for a request's own fields (vote, log ids), beside its entries.
const REQUEST_OVERHEAD_BYTES: usize = 256;

/// `request` cut into consecutive parts whose entries encode (by `entry_bytes`) to at most `bytes_max`
/// each, less the request's own fields. A request of no entries, or of one, is returned whole.
pub fn split<C: RaftTypeConfig>(
    request: AppendEntriesRequest<C>,
    bytes_max: usize,
    entry_bytes: impl Fn(&C::Entry) -> usize,
) -> Vec<AppendEntriesRequest<C>> {
    let budget = bytes_max.saturating_sub(REQUEST_OVERHEAD_BYTES).max(1);
    let AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    } = request;
    let mut parts: Vec<AppendEntriesRequest<C>> = Vec::new();
    let mut prev = prev_log_id;
    let mut part: Vec<C::Entry> = Vec::new();
    let mut part_bytes = 0usize;
    let close = |part: Vec<C::Entry>, prev: &mut Option<LogIdOf<C>>| {
        let last = part.last().map(RaftEntry::log_id);
        // A follower may commit only what it holds: a part learns the leader's commit index as far as
        // its own last entry, which the leader's log has committed if the commit index is past it.
        let commit = match (&leader_commit, &last) {
            (Some(commit), Some(last)) if commit > last => Some(last.clone()),
            _ => leader_commit.clone(),
        };
        let made = AppendEntriesRequest {
            vote: vote.clone(),
            prev_log_id: prev.clone(),
            entries: part,
            leader_commit: commit,
        };
        *prev = last;
        made
    };
    for entry in entries {
        let bytes = entry_bytes(&entry);
        if !part.is_empty() && part_bytes.saturating_add(bytes) > budget {
            parts.push(close(std::mem::take(&mut part), &mut prev));
            part_bytes = 0;
        }
        part_bytes = part_bytes.saturating_add(bytes);
        part.push(entry);
    }
    if !part.is_empty() || parts.is_empty() {
        parts.push(close(part, &mut prev));
    }
    parts
}

/// Sends `parts` (from [`split`]) in order with `send`, stopping at the first that is not accepted
/// whole, and answers for the request they were cut from:
///
/// - every part accepted: `Success`;
/// - the first part refused (`Conflict`, `HigherVote`) or not answered: that answer, as the whole's;
/// - a later part not answered, or accepted in part: `PartialSuccess` up to what the follower confirmed
///   (openraft goes on from there);
/// - a later part answered `HigherVote`: that, since the leader must step down whatever came before;
/// - a later part answered `Conflict` — the follower no longer holds what it just accepted, so its log
///   was cut by someone else meanwhile: an error, so openraft starts over from what it can confirm.
pub async fn combine<C, F, Fut>(
    parts: Vec<AppendEntriesRequest<C>>,
    send: F,
) -> Result<AppendEntriesResponse<C>, RPCError<C>>
where
    C: RaftTypeConfig,
    F: Fn(AppendEntriesRequest<C>) -> Fut,
    Fut: Future<Output = Result<AppendEntriesResponse<C>, RPCError<C>>>,
{
    let count = parts.len();
    // What the follower confirmed holding, once a part was accepted whole.
    let mut confirmed: Option<Option<LogIdOf<C>>> = None;
    for (position, part) in parts.into_iter().enumerate() {
        let last = part
            .entries
            .last()
            .map(RaftEntry::log_id)
            .or_else(|| part.prev_log_id.clone());
        let answer = send(part).await;
        let Some(held) = confirmed.clone() else {
            match answer {
                Ok(AppendEntriesResponse::Success) => {
                    confirmed = Some(last);
                    continue;
                }
                other => return other,
            }
        };
        match answer {
            Ok(AppendEntriesResponse::Success) => confirmed = Some(last),
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => {
                return Ok(AppendEntriesResponse::PartialSuccess(matching));
            }
            Ok(AppendEntriesResponse::HigherVote(vote)) => {
                return Ok(AppendEntriesResponse::HigherVote(vote));
            }
            Ok(AppendEntriesResponse::Conflict) => {
                return Err(RPCError::Network(NetworkError::from_string(format!(
                    "part {} of {count} of an append was refused as a conflict after the part before it was \
                     accepted: the follower's log changed in between",
                    position + 1
                ))));
            }
            Err(_) => return Ok(AppendEntriesResponse::PartialSuccess(held)),
        }
    }
    debug_assert!(confirmed.is_some(), "split never makes zero parts");
    Ok(AppendEntriesResponse::Success)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use openraft::alias::{EntryOf, VoteOf};
    use openraft::error::Unreachable;

    use super::*;
    use crate::config::TokioConfig as C;

    fn log_id(index: u64) -> LogIdOf<C> {
        LogIdOf::<C>::new_term_index(1, index)
    }

    fn request(prev: u64, entries: std::ops::RangeInclusive<u64>, commit: u64) -> AppendEntriesRequest<C> {
        AppendEntriesRequest {
            vote: VoteOf::<C>::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            entries: entries
                .map(|index| EntryOf::<C>::new_blank(log_id(index)))
                .collect(),
            leader_commit: Some(log_id(commit)),
        }
    }

    /// (prev index, first index, last index, commit index) of each part; 0 for none.
    fn shape(parts: &[AppendEntriesRequest<C>]) -> Vec<(u64, u64, u64, u64)> {
        let index = |id: Option<LogIdOf<C>>| id.map_or(0, |id| id.index());
        parts
            .iter()
            .map(|part| {
                (
                    index(part.prev_log_id),
                    index(part.entries.first().map(RaftEntry::log_id)),
                    index(part.entries.last().map(RaftEntry::log_id)),
                    index(part.leader_commit),
                )
            })
            .collect()
    }

    /// Entries 11..=20 of 1 MiB each, a budget of 3 MiB: parts of three, chained, each committing no
    /// further than its own last entry.
    #[test]
    fn a_large_request_is_cut_into_chained_parts_within_the_bound() {
        let parts = split(request(10, 11..=20, 18), 3 << 20, |_| 1 << 20);
        // 3 MiB less the request's own fields holds two entries of 1 MiB.
        assert_eq!(
            shape(&parts),
            vec![
                (10, 11, 12, 12),
                (12, 13, 14, 14),
                (14, 15, 16, 16),
                (16, 17, 18, 18),
                (18, 19, 20, 18)
            ]
        );
        let entries: usize = parts.iter().map(|part| part.entries.len()).sum();
        assert_eq!(entries, 10);
    }

    #[test]
    fn a_request_within_the_bound_or_without_entries_stays_whole() {
        assert_eq!(
            shape(&split(request(10, 11..=20, 15), 4 << 20, |_| 1_000)),
            vec![(10, 11, 20, 15)]
        );
        let mut heartbeat = request(10, 11..=11, 10);
        heartbeat.entries.clear();
        assert_eq!(shape(&split(heartbeat, 4 << 20, |_| 1_000)), vec![(10, 0, 0, 10)]);
    }

    #[test]
    fn an_entry_larger_than_the_bound_goes_alone() {
        let sizes = |entry: &EntryOf<C>| {
            if entry.log_id().index() == 12 {
                9 << 20
            } else {
                1 << 20
            }
        };
        assert_eq!(
            shape(&split(request(10, 11..=13, 13), 4 << 20, sizes)),
            vec![(10, 11, 11, 11), (11, 12, 12, 12), (12, 13, 13, 13)]
        );
    }

    type Answers = Arc<Mutex<Vec<Result<AppendEntriesResponse<C>, RPCError<C>>>>>;

    /// Sends three parts to a follower answering from `answers` in turn; what `combine` says and how
    /// many parts were sent.
    fn run(answers: Vec<Result<AppendEntriesResponse<C>, RPCError<C>>>) -> (String, usize) {
        let parts = split(request(10, 11..=16, 16), 2 << 20, |_| 1 << 20);
        assert_eq!(parts.len(), 6, "one entry per part at this budget");
        let parts: Vec<_> = parts.into_iter().take(3).collect();
        let answers: Answers = Arc::new(Mutex::new(answers));
        let sent = Arc::new(Mutex::new(0usize));
        let send = |_part: AppendEntriesRequest<C>| {
            *sent.lock().unwrap() += 1;
            let answer = answers.lock().unwrap().remove(0);
            std::future::ready(answer)
        };
        let combined = futures_util::FutureExt::now_or_never(combine(parts, send)).expect("ready");
        let shown = match combined {
            Ok(AppendEntriesResponse::Success) => "success".to_string(),
            Ok(AppendEntriesResponse::PartialSuccess(matching)) => {
                format!("partial {}", matching.map_or(0, |id| id.index()))
            }
            Ok(AppendEntriesResponse::Conflict) => "conflict".to_string(),
            Ok(AppendEntriesResponse::HigherVote(_)) => "higher vote".to_string(),
            Err(_) => "error".to_string(),
        };
        let count = *sent.lock().unwrap();
        (shown, count)
    }

    fn lost() -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(Unreachable::from_string("cut")))
    }

    #[test]
    fn the_answer_to_the_parts_is_the_answer_to_the_whole() {
        use AppendEntriesResponse::{Conflict, HigherVote, Success};
        let higher = || Ok(HigherVote(VoteOf::<C>::new_committed(2, 2)));
        assert_eq!(
            run(vec![Ok(Success), Ok(Success), Ok(Success)]),
            ("success".into(), 3)
        );
        // The first part speaks for the whole.
        assert_eq!(run(vec![Ok(Conflict)]), ("conflict".into(), 1));
        assert_eq!(run(vec![higher()]), ("higher vote".into(), 1));
        assert_eq!(run(vec![lost()]), ("error".into(), 1));
        // A later part lost: the follower holds what it confirmed, entries 11 and 12.
        assert_eq!(
            run(vec![Ok(Success), Ok(Success), lost()]),
            ("partial 12".into(), 3)
        );
        assert_eq!(run(vec![Ok(Success), higher()]), ("higher vote".into(), 2));
        // Refused after accepting the part before: its log changed under us; start over.
        assert_eq!(run(vec![Ok(Success), Ok(Conflict)]), ("error".into(), 2));
    }
}
