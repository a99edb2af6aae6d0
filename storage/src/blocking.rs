//! Where the state machine's synchronous store calls run.
//!
//! redb blocks on disk I/O only when a commit is durable (`fdatasync`) or a snapshot is built; its
//! non-durable commits and its reads touch memory and the page cache. So in production the short calls
//! (apply a batch non-durably, read a record) run on the caller's task, saving two thread hand-offs per
//! apply — on a busy machine each hand-off waits for a core — while the calls that sync run on a
//! dedicated thread that the async side awaits through a runtime oneshot, or does not await at all (the
//! periodic durable commit, see [`crate::state_machine`]). In the simulator the store is in memory and
//! every call runs inline on the deterministic runtime's single thread.

use std::sync::mpsc;
use std::thread::JoinHandle;

use openraft::type_config::OneshotSender;
use openraft::type_config::TypeConfigExt;

use crate::StorageTypeConfig;
use crate::error::StateMachineError;

type Job = Box<dyn FnOnce() + Send>;

/// How the state machine runs its store calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    /// Every call on the caller's task (in-memory stores, the simulator).
    Inline,
    /// Calls that sync (durable commits, snapshots) on one dedicated thread per state machine; short
    /// calls on the caller's task when the store is free, else queued on that thread (redb in
    /// production).
    DedicatedThread,
}

/// Where a [`Executor::run_apart`] job runs: on a thread of its own, or inline on the caller's (the
/// simulator's one thread, whose priority is not the job's to change).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Apart {
    own_thread: bool,
}

impl Apart {
    /// Whether the job runs on a thread of its own (not inline on the caller's, as in the simulator).
    pub(crate) fn own_thread(&self) -> bool {
        self.own_thread
    }

    /// Lowers the job's thread's CPU priority ([`crate::priority`]), if it has a thread of its own.
    /// Returns the thread's nice value afterwards (`None` inline).
    pub(crate) fn lower_priority(self, nice: i32, what: &str) -> Option<i32> {
        if !self.own_thread {
            return None;
        }
        crate::priority::lower_this_thread_or_warn(nice, what);
        crate::priority::this_thread_nice().ok()
    }
}

pub(crate) struct Executor {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Executor {
    pub(crate) fn new(execution: Execution, name: String) -> Result<Executor, StateMachineError> {
        match execution {
            Execution::Inline => Ok(Executor {
                jobs: None,
                thread: None,
            }),
            Execution::DedicatedThread => {
                let (jobs, receiver) = mpsc::channel::<Job>();
                let thread = std::thread::Builder::new()
                    .name(name)
                    .spawn(move || {
                        for job in receiver {
                            job();
                        }
                    })
                    .map_err(|e| {
                        StateMachineError::Backend(format!("cannot start the state machine thread: {e}"))
                    })?;
                Ok(Executor {
                    jobs: Some(jobs),
                    thread: Some(thread),
                })
            }
        }
    }

    /// Runs `job` where store calls that may sync belong and returns its result.
    pub(crate) async fn run<C, T>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, StateMachineError>
    where
        C: StorageTypeConfig,
        T: Send + 'static,
    {
        let Some(jobs) = &self.jobs else { return Ok(job()) };
        let (tx, rx) = C::oneshot();
        jobs.send(Box::new(move || {
            let _ = tx.send(job());
        }))
        .map_err(|_| StateMachineError::WorkerStopped)?;
        rx.await.map_err(|_| StateMachineError::WorkerStopped)
    }

    /// Runs `job` on a thread of its own, started for it (inline without a dedicated thread, as in the
    /// simulator): for a long job — a snapshot build, seconds at volume — that must not hold up the store
    /// calls queued on the dedicated thread behind it (large applies, reads that found the store busy).
    /// The job is told where it runs ([`Apart`]), so it may lower its thread's priority.
    pub(crate) async fn run_apart<C, T>(
        &self,
        name: &str,
        job: impl FnOnce(Apart) -> T + Send + 'static,
    ) -> Result<T, StateMachineError>
    where
        C: StorageTypeConfig,
        T: Send + 'static,
    {
        if self.jobs.is_none() {
            return Ok(job(Apart { own_thread: false }));
        }
        let (tx, rx) = C::oneshot();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = tx.send(job(Apart { own_thread: true }));
            })
            .map_err(|e| StateMachineError::Backend(format!("cannot start the {name} thread: {e}")))?;
        rx.await.map_err(|_| StateMachineError::WorkerStopped)
    }

    /// Queues `job` on the dedicated thread without waiting for it (inline if there is none). Jobs
    /// run in the order they were queued, before any later [`Executor::run`] job.
    pub(crate) fn submit(&self, job: impl FnOnce() + Send + 'static) -> Result<(), StateMachineError> {
        let Some(jobs) = &self.jobs else {
            job();
            return Ok(());
        };
        jobs.send(Box::new(job))
            .map_err(|_| StateMachineError::WorkerStopped)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the state machine thread panicked");
        }
    }
}
