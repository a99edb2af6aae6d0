//! Where the state machine's synchronous store calls run.
//!
//! redb blocks on disk I/O, so in production its calls run on a dedicated thread and the async
//! side awaits a runtime oneshot; in the simulator the store is in memory and calls run inline on
//! the deterministic runtime's single thread.

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
    /// On the caller's task (in-memory stores, the simulator).
    Inline,
    /// On one dedicated thread per state machine (redb in production).
    DedicatedThread,
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

    /// Runs `job` where store calls belong and returns its result.
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
