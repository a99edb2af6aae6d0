//! The CPU priority of the store's bulk background threads.
//!
//! A snapshot's build (a scan of the whole keyspace into a spool) and a received snapshot's install
//! (every item inserted into redb as it arrives, [`crate::snapshot_feed`]) are seconds of CPU each at
//! volume, and no client waits for them; the applies and appends of the same node, and of the other
//! nodes on the machine, are on every write's path. On a node with few cores they compete for the
//! same ones: with two cores, a migration's copy raised the write p99 4.3-fold on a quiet machine. So these
//! threads lower their own priority ([`lower_this_thread`], Linux's per-thread nice value): the
//! scheduler then gives them what the foreground leaves, which on an idle node is everything.
//!
//! A thread only ever lowers its priority (an unprivileged thread can't raise it again), and only
//! where it holds no lock a foreground call waits for: the build lowers it after taking its read
//! view, and syncs its spool before it takes the state machine's lock to keep the snapshot.

/// The nice value of a snapshot's build and install threads (0 is the default, 19 the lowest).
/// Linux weighs a nice-19 thread at about 1/70 of a nice-0 one: it runs at full speed on an idle core
/// and yields nearly all of a busy one, and a foreground thread that wakes takes the core from it
/// at once. Nice 10 (a tenth) was not enough: three busy nice-10 threads on two cores raised the write
/// p99 of an idle cluster beside them 2–5-fold, three nice-19 ones 1.5–2-fold (docs/performance.md).
pub const SNAPSHOT_THREAD_NICE: i32 = 19;

/// Lowers the calling thread's CPU priority to `nice`, unless it is lower already. Only this
/// thread, not its process: Linux keeps a nice value per thread. Elsewhere a no-op.
pub fn lower_this_thread(nice: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let current = this_thread_nice()?;
        if current >= nice {
            return Ok(());
        }
        // SAFETY: setpriority reads no memory of ours; the id is this thread's own.
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, this_thread_id(), nice) };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
    Ok(())
}

/// Lowers the calling thread's priority as [`lower_this_thread`] does, logging (not failing) when
/// the system refuses: the work is the same at either priority.
pub fn lower_this_thread_or_warn(nice: i32, what: &str) {
    if let Err(error) = lower_this_thread(nice) {
        tracing::warn!(%error, what, "could not lower a background thread's priority");
    }
}

/// The calling thread's nice value (Linux), 0 elsewhere.
pub fn this_thread_nice() -> std::io::Result<i32> {
    #[cfg(target_os = "linux")]
    {
        // getpriority may return -1 as a value: errno tells an error apart.
        // SAFETY: errno is this thread's own; getpriority reads no memory of ours.
        unsafe { *libc::__errno_location() = 0 };
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, this_thread_id()) };
        if nice == -1
            && let Some(code) = std::io::Error::last_os_error().raw_os_error()
            && code != 0
        {
            return Err(std::io::Error::from_raw_os_error(code));
        }
        Ok(nice)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(0)
}

#[cfg(target_os = "linux")]
fn this_thread_id() -> libc::id_t {
    // SAFETY: gettid takes no arguments and can't fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_its_own_priority_not_its_process() {
        let before = this_thread_nice().unwrap();
        let (lowered, again) = std::thread::spawn(|| {
            lower_this_thread(SNAPSHOT_THREAD_NICE).unwrap();
            let lowered = this_thread_nice().unwrap();
            // Asking for a higher priority than it has is not an error, and changes nothing.
            lower_this_thread(SNAPSHOT_THREAD_NICE - 5).unwrap();
            (lowered, this_thread_nice().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(
            lowered,
            SNAPSHOT_THREAD_NICE.max(before),
            "the thread runs at the background nice value"
        );
        assert_eq!(again, lowered, "a thread never raises its priority again");
        assert_eq!(
            this_thread_nice().unwrap(),
            before,
            "the spawning thread keeps its priority"
        );
    }
}
