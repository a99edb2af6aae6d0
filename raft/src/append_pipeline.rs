//! The stream of AppendEntries to one follower, where a commit notice rides on the next append.
//!
//! As soon as an entry commits, openraft sends each follower an entry-less AppendEntries carrying the
//! new commit index (a commit notice). Under a steady stream of writes the next entry follows a
//! moment later, and it carries the commit index too: the notice alone costs the leader a request and
//! an answer per follower per write, and the follower a pass through its Raft core, which on a
//! single-client load is four of the leader's ten messages per put.
//!
//! So a notice is held back for at most [`NOTICE_HOLD`]. If the next request names the same
//! `prev_log_id` (it appends right after the entries the notice's `prev_log_id` names), only that
//! request is sent, and the notice is answered from its answer: a follower that accepts entries after
//! `prev_log_id` holds `prev_log_id`, which is all the notice asks; one that refuses them refuses the
//! notice the same way; and the commit index it learns is at least the notice's. Otherwise the notice
//! is sent alone when its hold ends. The follower's commit index lags by at most the hold, which no
//! Raft safety property depends on; it is far shorter than any heartbeat interval.
//!
//! Only a notice is held: an entry-less request whose `prev_log_id` the follower has just confirmed in
//! this stream. The first request of a stream (a heartbeat, a probe) always leaves at once. As with
//! openraft's default, one request is on the wire at a time and answers come back in request order,
//! with one exception: entries appended right after a notice that left alone (its hold ended) go out
//! at once, without waiting for the notice's answer. Otherwise a put arriving just after the hold waited
//! a whole round trip to the follower for an answer that tells the leader nothing it needs, and on a
//! WAN that round trip is the largest part of the put's latency. The follower may take the two in
//! either order: the notice appends nothing, so it truncates nothing, and it asks only that the follower
//! holds `prev_log_id`, which the entries after it also ask.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::future::{Either, select};
use futures_util::stream::{FuturesOrdered, Stream, StreamExt};
use openraft::RaftTypeConfig;
use openraft::alias::{InstantOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::error::{NetworkError, RPCError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult};
use openraft::type_config::TypeConfigExt;

/// The longest a commit notice waits for a request to ride on. A single client's next put reaches
/// the leader a few hundred microseconds after the previous one commits, on loopback.
pub const NOTICE_HOLD: Duration = Duration::from_millis(2);

type Answer<C> = Result<StreamAppendResult<C>, RPCError<C>>;

/// The log range a request covers: `(prev_log_id, last]`.
struct Range<C: RaftTypeConfig> {
    prev: Option<LogIdOf<C>>,
    last: Option<LogIdOf<C>>,
}

impl<C: RaftTypeConfig> Range<C> {
    fn of(request: &AppendEntriesRequest<C>) -> Range<C> {
        let prev = request.prev_log_id.clone();
        let last = request
            .entries
            .last()
            .map(RaftEntry::log_id)
            .or_else(|| prev.clone());
        Range { prev, last }
    }
}

/// A request's range, the ranges of the notices that rode on it (in request order, all before it), and
/// the follower's response.
type Landed<C> = (
    Range<C>,
    Vec<Range<C>>,
    Result<AppendEntriesResponse<C>, RPCError<C>>,
);

/// A request on the wire, until its response lands.
type OnTheWire<'s, C> = Pin<Box<dyn Future<Output = Landed<C>> + Send + 's>>;

/// The answers to `input`'s requests, in request order, sending each with `send`. The stream ends
/// after the first error, refusal or partial success (openraft restarts replication from what the
/// follower reported), or when `input` ends and every answer is in.
pub fn answers<'s, C, S, F, Fut>(input: S, send: F) -> impl Stream<Item = Answer<C>> + Send + 's
where
    C: RaftTypeConfig,
    S: Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 's,
    F: Fn(AppendEntriesRequest<C>) -> Fut + Send + 's,
    Fut: Future<Output = Result<AppendEntriesResponse<C>, RPCError<C>>> + Send + 's,
{
    let pipeline = Pipeline::<'s, C, S, F> {
        input: Some(input),
        send,
        wire: FuturesOrdered::new(),
        lone_notice: None,
        held: Vec::new(),
        hold_until: None,
        next_up: None,
        confirmed: None,
        ready: VecDeque::new(),
        stopped: false,
    };
    futures_util::stream::unfold(pipeline, |mut pipeline| async move {
        let answer = pipeline.next_answer().await?;
        Some((answer, pipeline))
    })
}

struct Pipeline<'s, C: RaftTypeConfig, S, F> {
    /// `None` once openraft's stream has ended.
    input: Option<S>,
    send: F,
    /// Requests sent and not answered yet, oldest first: at most one, or a notice sent alone and the
    /// entries appended right after it.
    wire: FuturesOrdered<OnTheWire<'s, C>>,
    /// While the only request on the wire is a commit notice sent alone: its vote and `prev_log_id`,
    /// which entries may follow at once.
    lone_notice: Option<(VoteOf<C>, Option<LogIdOf<C>>)>,
    /// Commit notices held back, oldest first, all naming the same `prev_log_id`.
    held: Vec<AppendEntriesRequest<C>>,
    hold_until: Option<InstantOf<C>>,
    /// A request taken from the input that must wait for the held notices to be sent first.
    next_up: Option<AppendEntriesRequest<C>>,
    /// The last log id the follower confirmed holding in this stream.
    confirmed: Option<Option<LogIdOf<C>>>,
    ready: VecDeque<Answer<C>>,
    stopped: bool,
}

impl<'s, C, S, F, Fut> Pipeline<'s, C, S, F>
where
    C: RaftTypeConfig,
    S: Stream<Item = AppendEntriesRequest<C>> + Send + Unpin + 's,
    F: Fn(AppendEntriesRequest<C>) -> Fut + Send + 's,
    Fut: Future<Output = Result<AppendEntriesResponse<C>, RPCError<C>>> + Send + 's,
{
    async fn next_answer(&mut self) -> Option<Answer<C>> {
        loop {
            if let Some(answer) = self.ready.pop_front() {
                return Some(answer);
            }
            if self.stopped {
                return None;
            }
            if !self.wire.is_empty() {
                let landed = match self.input.as_mut() {
                    // A notice alone on the wire: the next entries need not wait for its answer.
                    Some(input) if self.lone_notice.is_some() && self.next_up.is_none() => {
                        match select(self.wire.next(), input.next()).await {
                            Either::Left((landed, _)) => landed,
                            Either::Right((Some(request), _)) => {
                                self.overtake(request);
                                continue;
                            }
                            Either::Right((None, _)) => {
                                self.input = None;
                                continue;
                            }
                        }
                    }
                    _ => self.wire.next().await,
                };
                let (range, riders, response) = landed.expect("the wire is not empty");
                self.lone_notice = None;
                self.interpret(range, riders, response);
                continue;
            }
            if let Some(request) = self.next_up.take() {
                self.accept(request);
                continue;
            }
            let Some(input) = self.input.as_mut() else {
                if self.held.is_empty() {
                    return None;
                }
                self.send_held();
                continue;
            };
            let Some(hold_until) = self.hold_until else {
                match input.next().await {
                    Some(request) => self.accept(request),
                    None => self.input = None,
                }
                continue;
            };
            // Holding a notice: the next request may carry it, until the hold ends.
            let hold_ends = Box::pin(C::sleep_until(hold_until));
            match select(input.next(), hold_ends).await {
                Either::Left((Some(request), _)) => self.accept(request),
                Either::Left((None, _)) => self.input = None,
                Either::Right(((), _)) => self.send_held(),
            }
        }
    }

    /// Holds `request` if it is a commit notice, sends it with the held notices riding on it if it
    /// can carry them, or sends the held notices first and keeps it for next.
    fn accept(&mut self, request: AppendEntriesRequest<C>) {
        debug_assert!(self.wire.is_empty(), "one request on the wire at a time");
        let is_notice = request.entries.is_empty()
            && self.confirmed.as_ref() == Some(&request.prev_log_id)
            && self.held.last().is_none_or(|held| carries(&request, held));
        if is_notice {
            if self.held.is_empty() {
                self.hold_until = Some(C::now() + NOTICE_HOLD);
            }
            self.held.push(request);
            return;
        }
        match self.held.last() {
            None => self.put_on_wire(request, Vec::new()),
            Some(held) if carries(&request, held) => {
                let riders = self.take_held();
                self.put_on_wire(request, riders);
            }
            Some(_) => {
                self.send_held();
                self.next_up = Some(request);
            }
        }
    }

    /// Sends the newest held notice, the older ones riding on it.
    fn send_held(&mut self) {
        let mut held = self.take_held();
        let Some(newest) = held.pop() else { return };
        if self.wire.is_empty() {
            tracing::debug!("a commit notice leaves alone");
            self.lone_notice = Some((newest.vote.clone(), newest.prev_log_id.clone()));
        }
        self.put_on_wire(newest, held);
    }

    /// Sends `request` while the notice sent alone is still on the wire, if it appends entries right
    /// after the notice's `prev_log_id` for the same leader; keeps it for after the answer otherwise.
    fn overtake(&mut self, request: AppendEntriesRequest<C>) {
        let follows = self.lone_notice.as_ref().is_some_and(|(vote, prev)| {
            !request.entries.is_empty() && &request.vote == vote && &request.prev_log_id == prev
        });
        if follows {
            tracing::debug!("entries leave beside a commit notice on the wire");
            self.lone_notice = None;
            self.put_on_wire(request, Vec::new());
        } else {
            self.next_up = Some(request);
        }
    }

    fn take_held(&mut self) -> Vec<AppendEntriesRequest<C>> {
        self.hold_until = None;
        std::mem::take(&mut self.held)
    }

    fn put_on_wire(&mut self, request: AppendEntriesRequest<C>, riders: Vec<AppendEntriesRequest<C>>) {
        let range = Range::of(&request);
        let riders = riders.iter().map(Range::of).collect();
        let answer = (self.send)(request);
        self.wire
            .push_back(Box::pin(async move { (range, riders, answer.await) }));
    }

    /// Queues the answers for the riders and the request sent, stopping at the first that ends the
    /// stream.
    fn interpret(
        &mut self,
        range: Range<C>,
        riders: Vec<Range<C>>,
        response: Result<AppendEntriesResponse<C>, RPCError<C>>,
    ) {
        for rider in riders {
            let answer = match &response {
                Err(error) => Err(error.clone()),
                Ok(sent) => self.check(rider_response(sent), &rider),
            };
            if self.queue(answer, &rider) {
                return;
            }
        }
        let answer = response.and_then(|response| self.check(response, &range));
        self.queue(answer, &range);
    }

    /// The follower's response to the request covering `range`, as openraft's stream result.
    fn check(&self, response: AppendEntriesResponse<C>, range: &Range<C>) -> Answer<C> {
        if matches!(response, AppendEntriesResponse::Conflict) && range.prev.is_none() {
            // Nothing precedes the start of the log, so nothing there can conflict: an honest
            // follower never says so, and openraft would panic on it.
            let reason = "the follower reported a conflict before the first entry";
            return Err(RPCError::Network(NetworkError::from_string(reason)));
        }
        Ok(response.into_stream_result(range.prev.clone(), range.last.clone()))
    }

    /// Queues one answer; returns whether it ends the stream.
    fn queue(&mut self, answer: Answer<C>, range: &Range<C>) -> bool {
        let ends = match &answer {
            Ok(Ok(matching)) if matching == &range.last => {
                self.confirmed = Some(matching.clone());
                false
            }
            // Partial success, refusal or failure: openraft starts over from what it learned.
            _ => true,
        };
        self.ready.push_back(answer);
        if ends {
            self.stopped = true;
        }
        ends
    }
}

/// Whether `request`, sent in place of the notice `held`, answers it: the same leader, the same
/// `prev_log_id`, and a commit index at least the notice's.
fn carries<C: RaftTypeConfig>(request: &AppendEntriesRequest<C>, held: &AppendEntriesRequest<C>) -> bool {
    request.vote == held.vote
        && request.prev_log_id == held.prev_log_id
        && request.leader_commit >= held.leader_commit
}

/// What the follower's response to a request says about a notice with the same `prev_log_id` that
/// rode on it: accepting anything after `prev_log_id` means holding it.
fn rider_response<C: RaftTypeConfig>(sent: &AppendEntriesResponse<C>) -> AppendEntriesResponse<C> {
    match sent {
        AppendEntriesResponse::Success => AppendEntriesResponse::Success,
        // Rare (a follower that stops part-way); passed on as is, it ends the stream at the notice
        // unless it confirms exactly the notice's `prev_log_id`, and openraft starts over from it.
        AppendEntriesResponse::PartialSuccess(matching) => {
            AppendEntriesResponse::PartialSuccess(matching.clone())
        }
        AppendEntriesResponse::Conflict => AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(vote) => AppendEntriesResponse::HigherVote(vote.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures_util::stream;
    use openraft::alias::{EntryOf, VoteOf};

    use super::*;
    use crate::config::TokioConfig as C;

    fn log_id(index: u64) -> LogIdOf<C> {
        LogIdOf::<C>::new_term_index(1, index)
    }

    fn request(prev: u64, entries: &[u64], commit: u64) -> AppendEntriesRequest<C> {
        AppendEntriesRequest {
            vote: VoteOf::<C>::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            entries: entries
                .iter()
                .map(|&index| EntryOf::<C>::new_blank(log_id(index)))
                .collect(),
            leader_commit: Some(log_id(commit)),
        }
    }

    /// What a test follower was sent, one (prev_log_id index, entry count, commit index) per request.
    type Sent = Arc<Mutex<Vec<(u64, usize, u64)>>>;
    type Reply = futures_util::future::Ready<Result<AppendEntriesResponse<C>, RPCError<C>>>;

    /// A follower that answers every request with `answer` and records what it was sent.
    fn follower(
        answer: AppendEntriesResponse<C>,
    ) -> (Sent, impl Fn(AppendEntriesRequest<C>) -> Reply + Send) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let send = move |request: AppendEntriesRequest<C>| {
            let index = |id: &Option<LogIdOf<C>>| id.as_ref().map_or(0, |id| id.index());
            log.lock().unwrap().push((
                index(&request.prev_log_id),
                request.entries.len(),
                index(&request.leader_commit),
            ));
            futures_util::future::ready(Ok(answer.clone()))
        };
        (sent, send)
    }

    /// What a distant test follower saw, in order: ("sent" or "answered", (prev_log_id index, entry count)).
    type Events = Arc<Mutex<Vec<(&'static str, (u64, usize))>>>;
    type DistantReply = Pin<Box<dyn Future<Output = Result<AppendEntriesResponse<C>, RPCError<C>>> + Send>>;

    /// A follower `round_trip` away that answers every request with success, recording when each
    /// request was sent and when it was answered.
    fn distant_follower(
        round_trip: Duration,
    ) -> (Events, impl Fn(AppendEntriesRequest<C>) -> DistantReply + Send) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let log = events.clone();
        let send = move |request: AppendEntriesRequest<C>| -> DistantReply {
            let log = log.clone();
            let what = (
                request.prev_log_id.as_ref().map_or(0, |id| id.index()),
                request.entries.len(),
            );
            log.lock().unwrap().push(("sent", what));
            Box::pin(async move {
                C::sleep(round_trip).await;
                log.lock().unwrap().push(("answered", what));
                Ok(AppendEntriesResponse::Success)
            })
        };
        (events, send)
    }

    fn matched(answers: &[Answer<C>]) -> Vec<Option<u64>> {
        answers
            .iter()
            .map(|answer| match answer {
                Ok(Ok(matching)) => matching.as_ref().map(|id| id.index()),
                other => panic!("expected a success, got {other:?}"),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_rides_on_the_next_append_and_is_answered_first() {
        let (sent, send) = follower(AppendEntriesResponse::Success);
        // Entries 5..=6, then the notice that 6 committed, then entry 7.
        let input = stream::iter([request(4, &[5, 6], 4), request(6, &[], 6), request(6, &[7], 6)]);
        let answers: Vec<_> = answers(input, send).collect().await;

        assert_eq!(matched(&answers), [Some(6), Some(6), Some(7)]);
        // The notice was never sent on its own: entry 7's request carried commit index 6.
        assert_eq!(*sent.lock().unwrap(), [(4, 2, 4), (6, 1, 6)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_nothing_follows_leaves_when_its_hold_ends() {
        let (sent, send) = follower(AppendEntriesResponse::Success);
        let started = C::now();
        // The notice is the last request for now; the next one comes long after the hold.
        let later = async {
            C::sleep(NOTICE_HOLD * 10).await;
            request(6, &[7], 6)
        };
        let input = stream::iter([request(5, &[6], 5), request(6, &[], 6)])
            .chain(stream::once(later))
            .boxed();
        let mut answers = std::pin::pin!(answers(input, send));

        assert_eq!(matched(&[answers.next().await.unwrap()]), [Some(6)]);
        assert_eq!(matched(&[answers.next().await.unwrap()]), [Some(6)]);
        let answered_at = C::now() - started;
        assert!(
            answered_at >= NOTICE_HOLD && answered_at < NOTICE_HOLD * 10,
            "{answered_at:?}"
        );
        assert_eq!(
            sent.lock().unwrap().last(),
            Some(&(6, 0, 6)),
            "the notice went alone"
        );
        assert_eq!(matched(&[answers.next().await.unwrap()]), [Some(7)]);
        assert!(answers.next().await.is_none());
        assert_eq!(sent.lock().unwrap().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_after_a_notice_sent_alone_leave_before_its_answer() {
        // A follower a WAN round trip away, and the next entry appended just after the notice's hold
        // ended: the entry goes out at once, not a round trip later when the notice is answered.
        let (events, send) = distant_follower(Duration::from_millis(40));
        let later = async {
            C::sleep(NOTICE_HOLD * 2).await;
            request(6, &[7], 6)
        };
        let input = stream::iter([request(5, &[6], 5), request(6, &[], 6)])
            .chain(stream::once(later))
            .boxed();
        let answers: Vec<_> = answers(input, send).collect().await;

        assert_eq!(matched(&answers), [Some(6), Some(6), Some(7)]);
        assert_eq!(
            *events.lock().unwrap(),
            [
                ("sent", (5, 1)),
                ("answered", (5, 1)),
                ("sent", (6, 0)),
                ("sent", (6, 1)),
                ("answered", (6, 0)),
                ("answered", (6, 1)),
            ],
            "the notice left alone when its hold ended, and entry 7 did not wait for its answer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_not_following_a_notice_sent_alone_waits_for_its_answer() {
        // A probe from elsewhere in the log (as after a conflict) is not sent beside the notice.
        let (events, send) = distant_follower(Duration::from_millis(40));
        let later = async {
            C::sleep(NOTICE_HOLD * 2).await;
            request(4, &[5, 6], 6)
        };
        let input = stream::iter([request(5, &[6], 5), request(6, &[], 6)])
            .chain(stream::once(later))
            .boxed();
        let answers: Vec<_> = answers(input, send).collect().await;

        assert_eq!(matched(&answers), [Some(6), Some(6), Some(6)]);
        assert_eq!(
            events.lock().unwrap()[2..],
            [
                ("sent", (6, 0)),
                ("answered", (6, 0)),
                ("sent", (4, 2)),
                ("answered", (4, 2)),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_request_of_a_stream_is_never_held() {
        // A heartbeat is a stream of one entry-less request: it must leave at once, not after a hold.
        let (sent, send) = follower(AppendEntriesResponse::Success);
        let started = C::now();
        let answers: Vec<_> = answers(stream::iter([request(6, &[], 6)]), send).collect().await;
        assert_eq!(matched(&answers), [Some(6)]);
        assert_eq!(C::now(), started);
        assert_eq!(*sent.lock().unwrap(), [(6, 0, 6)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_notice_is_sent_when_the_stream_ends_while_it_is_held() {
        let (sent, send) = follower(AppendEntriesResponse::Success);
        let input = stream::iter([request(5, &[6], 5), request(6, &[], 6)]);
        let answers: Vec<_> = answers(input, send).collect().await;
        assert_eq!(matched(&answers), [Some(6), Some(6)]);
        assert_eq!(*sent.lock().unwrap(), [(5, 1, 5), (6, 0, 6)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_of_the_carrier_is_the_notices_refusal_and_ends_the_stream() {
        let sent = Arc::new(Mutex::new(0));
        let count = sent.clone();
        // The follower accepts the first request, then reports a higher vote.
        let send = move |_request: AppendEntriesRequest<C>| {
            let mut count = count.lock().unwrap();
            *count += 1;
            let answer = if *count == 1 {
                AppendEntriesResponse::Success
            } else {
                AppendEntriesResponse::HigherVote(VoteOf::<C>::new_committed(2, 2))
            };
            futures_util::future::ready(Ok(answer))
        };
        let input = stream::iter([
            request(5, &[6], 5),
            request(6, &[], 6),
            request(6, &[7], 6),
            request(7, &[8], 7),
        ]);
        let answers: Vec<_> = answers(input, send).collect().await;

        assert_eq!(
            answers.len(),
            2,
            "the stream ends at the notice's refusal: {answers:?}"
        );
        assert!(matches!(
            answers[1],
            Ok(Err(openraft::raft::StreamAppendError::HigherVote(_)))
        ));
        assert_eq!(*sent.lock().unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_with_another_prev_log_id_waits_for_the_held_notice() {
        // A notice, then a request that cannot carry it (a lower commit index, as no leader sends):
        // the notice leaves first and the request after its answer.
        let (sent, send) = follower(AppendEntriesResponse::Success);
        let input = stream::iter([request(5, &[6], 6), request(6, &[], 6), request(6, &[7], 5)]);
        let answers: Vec<_> = answers(input, send).collect().await;
        assert_eq!(matched(&answers), [Some(6), Some(6), Some(7)]);
        assert_eq!(*sent.lock().unwrap(), [(5, 1, 6), (6, 0, 6), (6, 1, 5)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_conflict_before_the_first_entry_is_an_error_not_a_panic() {
        let (_sent, send) = follower(AppendEntriesResponse::Conflict);
        let mut probe = request(0, &[], 0);
        probe.prev_log_id = None;
        let answers: Vec<_> = answers(stream::iter([probe]), send).collect().await;
        assert!(matches!(answers[..], [Err(RPCError::Network(_))]), "{answers:?}");
    }
}
