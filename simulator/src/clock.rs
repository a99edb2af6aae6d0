//! Per-node clocks on the one virtual clock.
//!
//! `openraft-rt-sim` has a single virtual clock for every task. Real nodes do not: each reads its own
//! monotonic clock, which starts at its own origin (skew), runs a little fast or slow (drift), and now and
//! then leaps forward (a VM paused or migrated, a host suspended — a monotonic clock never runs backwards).
//! openraft reads time only through its runtime (election timers, heartbeats, leases, timeouts), so this
//! module gives it a runtime, [`NodeClockRuntime`], that is `openraft-rt-sim` with one change: its
//! [`NodeInstant`] is the time on the clock of the node whose code is running, and its sleeps and timeouts
//! are measured on that clock.
//!
//! Which node's code is running: every task openraft spawns inherits the node of the task that spawned it,
//! and the world enters a node when it starts it, opens its groups, or delivers a message to it
//! ([`on_node`]). Code outside any node (the world, clients, checkers) reads the true virtual time.
//!
//! Each node's clock is `local = base_local + (global - base_global) × (1 + drift)`, rebased whenever the
//! drift changes or the clock leaps, so it stays monotonic. A sleep computes its global deadline when it
//! starts and checks again when it wakes, so a clock that slowed down makes it sleep on; one that leapt
//! forward wakes it at its original deadline, not at the leap. The clocks live in a thread-local table: a
//! run is one thread, and parallel runs (tests) do not share them.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::async_runtime::Instant as _;
use openraft::{AsyncRuntime, OptionalSend};
use openraft_rt_sim::{SimInstant, SimRuntime};

/// Where every node's clock starts, before its skew: far enough from zero that no instant underflows.
const ORIGIN_NANOS: u64 = 86_400 * 1_000_000_000;

#[derive(Clone, Copy, Debug)]
struct Clock {
    base_global: u64,
    base_local: u64,
    drift_ppm: i64,
}

impl Clock {
    fn local(&self, global: u64) -> u64 {
        let elapsed = global.saturating_sub(self.base_global) as i128;
        let scaled = elapsed * (1_000_000 + self.drift_ppm as i128) / 1_000_000;
        self.base_local + scaled as u64
    }

    /// The global time at which this clock reads `local` (now or earlier if it already has).
    fn global(&self, local: u64, now_global: u64) -> u64 {
        if local <= self.local(now_global) {
            return now_global;
        }
        let ahead = (local - self.base_local) as i128;
        let rate = 1_000_000 + self.drift_ppm as i128;
        let scaled = (ahead * 1_000_000 + rate - 1) / rate;
        self.base_global + scaled as u64
    }
}

thread_local! {
    static CLOCKS: RefCell<BTreeMap<u64, Clock>> = const { RefCell::new(BTreeMap::new()) };
    static CURRENT: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The true virtual time, in nanoseconds since the runtime's start.
fn global_now() -> u64 {
    SimInstant::now().elapsed_since_start().as_nanos() as u64
}

fn local_now(node: Option<u64>) -> u64 {
    let global = global_now();
    let clock = node.and_then(|node| CLOCKS.with(|clocks| clocks.borrow().get(&node).copied()));
    match clock {
        Some(clock) => clock.local(global),
        None => ORIGIN_NANOS + global,
    }
}

fn global_deadline(node: Option<u64>, local: u64) -> u64 {
    let now = global_now();
    let clock = node.and_then(|node| CLOCKS.with(|clocks| clocks.borrow().get(&node).copied()));
    match clock {
        Some(clock) => clock.global(local, now),
        None => local.saturating_sub(ORIGIN_NANOS).max(now),
    }
}

/// Forgets every node's clock (a new run on this thread).
pub fn reset() {
    CLOCKS.with(|clocks| clocks.borrow_mut().clear());
    CURRENT.with(|current| current.set(None));
}

/// Gives `node` a clock that reads `skew` ahead of the origin and drifts by `drift_ppm` parts per million.
pub fn install(node: u64, skew: Duration, drift_ppm: i64) {
    let now = global_now();
    let clock = Clock {
        base_global: now,
        base_local: ORIGIN_NANOS + now + skew.as_nanos() as u64,
        drift_ppm,
    };
    CLOCKS.with(|clocks| clocks.borrow_mut().insert(node, clock));
}

/// Changes `node`'s drift from now on (its reading does not jump).
pub fn set_drift(node: u64, drift_ppm: i64) {
    let now = global_now();
    CLOCKS.with(|clocks| {
        if let Some(clock) = clocks.borrow_mut().get_mut(&node) {
            *clock = Clock {
                base_global: now,
                base_local: clock.local(now),
                drift_ppm,
            };
        }
    });
}

/// `node`'s clock leaps forward by `by` (a pause the node did not see pass).
pub fn leap(node: u64, by: Duration) {
    let now = global_now();
    CLOCKS.with(|clocks| {
        if let Some(clock) = clocks.borrow_mut().get_mut(&node) {
            clock.base_local = clock.local(now) + by.as_nanos() as u64;
            clock.base_global = now;
        }
    });
}

/// Runs `future` as `node`'s code: its clock reads, and the tasks it spawns belong to `node`.
pub fn on_node<F: Future>(node: u64, future: F) -> OnNode<F> {
    OnNode {
        node: Some(node),
        inner: Box::pin(future),
    }
}

/// A future polled as the code of a node (or of none).
pub struct OnNode<F> {
    node: Option<u64>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for OnNode<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<F::Output> {
        let previous = CURRENT.with(|current| current.replace(self.node));
        let polled = self.inner.as_mut().poll(context);
        CURRENT.with(|current| current.set(previous));
        polled
    }
}

/// A point on the clock of the node that read it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeInstant(u64);

impl fmt::Debug for NodeInstant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeInstant({}ns)", self.0 - ORIGIN_NANOS.min(self.0))
    }
}

impl Add<Duration> for NodeInstant {
    type Output = NodeInstant;
    fn add(self, rhs: Duration) -> NodeInstant {
        NodeInstant(self.0 + rhs.as_nanos() as u64)
    }
}

impl AddAssign<Duration> for NodeInstant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

impl Sub<Duration> for NodeInstant {
    type Output = NodeInstant;
    fn sub(self, rhs: Duration) -> NodeInstant {
        NodeInstant(self.0.saturating_sub(rhs.as_nanos() as u64))
    }
}

impl SubAssign<Duration> for NodeInstant {
    fn sub_assign(&mut self, rhs: Duration) {
        *self = *self - rhs;
    }
}

impl Sub<NodeInstant> for NodeInstant {
    type Output = Duration;
    fn sub(self, rhs: NodeInstant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(rhs.0))
    }
}

impl openraft::async_runtime::Instant for NodeInstant {
    fn now() -> NodeInstant {
        NodeInstant(local_now(CURRENT.with(Cell::get)))
    }
}

/// A sleep until a reading of the sleeping node's clock.
pub struct NodeSleep {
    node: Option<u64>,
    deadline: u64,
    inner: Pin<Box<<SimRuntime as AsyncRuntime>::Sleep>>,
}

impl NodeSleep {
    fn until(deadline: NodeInstant) -> NodeSleep {
        let node = CURRENT.with(Cell::get);
        NodeSleep {
            node,
            deadline: deadline.0,
            inner: Box::pin(sleep_until_global(global_deadline(node, deadline.0))),
        }
    }
}

fn sleep_until_global(global: u64) -> <SimRuntime as AsyncRuntime>::Sleep {
    let wait = Duration::from_nanos(global.saturating_sub(global_now()));
    SimRuntime::sleep_until(SimInstant::now() + wait)
}

impl Future for NodeSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.inner.as_mut().poll(context).is_pending() {
                return Poll::Pending;
            }
            if local_now(self.node) >= self.deadline {
                return Poll::Ready(());
            }
            // The clock slowed down while this slept: sleep on to the deadline as it now stands.
            let global = global_deadline(self.node, self.deadline);
            self.inner = Box::pin(sleep_until_global(global));
        }
    }
}

/// A timeout measured on the waiting node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

pub struct NodeTimeout<T> {
    future: Pin<Box<T>>,
    sleep: NodeSleep,
}

impl<R, T: Future<Output = R>> Future for NodeTimeout<T> {
    type Output = Result<R, TimedOut>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(value) = self.future.as_mut().poll(context) {
            return Poll::Ready(Ok(value));
        }
        match Pin::new(&mut self.sleep).poll(context) {
            Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `openraft-rt-sim` with per-node clocks: the runtime of the simulator's groups.
pub struct NodeClockRuntime {
    inner: SimRuntime,
}

impl fmt::Debug for NodeClockRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeClockRuntime").finish_non_exhaustive()
    }
}

impl AsyncRuntime for NodeClockRuntime {
    type JoinError = <SimRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <SimRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = NodeSleep;
    type Instant = NodeInstant;
    type TimeoutError = TimedOut;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = NodeTimeout<T>;
    type ThreadLocalRng = <SimRuntime as AsyncRuntime>::ThreadLocalRng;
    type Mpsc = <SimRuntime as AsyncRuntime>::Mpsc;
    type Watch = <SimRuntime as AsyncRuntime>::Watch;
    type Oneshot = <SimRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <SimRuntime as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        let node = CURRENT.with(Cell::get);
        SimRuntime::spawn(OnNode {
            node,
            inner: Box::pin(future),
        })
    }

    fn sleep(duration: Duration) -> NodeSleep {
        NodeSleep::until(NodeInstant::now() + duration)
    }

    fn sleep_until(deadline: NodeInstant) -> NodeSleep {
        NodeSleep::until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> NodeTimeout<F> {
        NodeTimeout {
            future: Box::pin(future),
            sleep: Self::sleep(duration),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: NodeInstant,
        future: F,
    ) -> NodeTimeout<F> {
        NodeTimeout {
            future: Box::pin(future),
            sleep: Self::sleep_until(deadline),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        SimRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SimRuntime::thread_rng()
    }

    fn new(threads: usize) -> Self {
        NodeClockRuntime {
            inner: SimRuntime::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, std::io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        SimRuntime::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drifting_clock_is_monotonic_and_inverts() {
        let clock = Clock {
            base_global: 1_000,
            base_local: 50_000,
            drift_ppm: 20_000,
        };
        assert_eq!(clock.local(1_000), 50_000);
        assert_eq!(clock.local(1_001_000), 50_000 + 1_020_000, "2% fast");
        let global = clock.global(50_000 + 1_020_000, 1_000);
        assert!(
            clock.local(global) >= 50_000 + 1_020_000,
            "the deadline is reached at its global time"
        );
        assert_eq!(
            clock.global(10, 7_000),
            7_000,
            "a reading already passed is due now"
        );
    }
}
