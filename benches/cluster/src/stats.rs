//! Latency percentiles and CPU time read from `/proc`.

/// The `q` quantile (0..=1) of sorted latencies, in microseconds (nearest rank).
pub fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// User + system CPU seconds a process has used so far (0 if it is gone).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| parse_stat(&stat))
        .map_or(0.0, |(_, seconds)| seconds)
}

/// Every thread of a process now: its id, its name (the kernel keeps 15 bytes of it) and the user +
/// system CPU seconds it has used. Empty if the process is gone. (The volume bench's: the workload
/// bench, which includes this file too, does not use it.)
#[allow(dead_code)]
pub fn thread_cpu_seconds(pid: u32) -> Vec<(u32, String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads = Vec::new();
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|name| name.parse().ok()) else {
            continue;
        };
        // A thread that ends between the listing and the read is left out.
        if let Some((name, seconds)) = std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| parse_stat(&stat))
        {
            threads.push((tid, name, seconds));
        }
    }
    threads
}

/// The name and user + system CPU seconds in a `/proc/…/stat` line.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    // The name sits in parentheses and may hold spaces and parentheses itself: it ends at the last `)`.
    // After it, state is field 3, utime 14 and stime 15, so they sit at 11 and 12.
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ticks = |index: usize| fields.get(index).and_then(|f| f.parse::<u64>().ok());
    // SAFETY: sysconf reads a constant of the running system; no memory is involved.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((name, (ticks(11)? + ticks(12)?) as f64 / per_second))
}

/// Context switches (voluntary and not) of all of a process's threads so far: each hand-off of a request
/// between threads (a sync thread, a state-machine thread, a runtime worker) costs at least one.
pub fn process_context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut switches = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(rest) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += rest.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    switches
}

/// This process's own user + system CPU seconds.
pub fn own_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id())
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<u32> = (1..=1000).collect();
        assert_eq!(quantile(&values, 0.5), 500);
        assert_eq!(quantile(&values, 0.99), 990);
        assert_eq!(quantile(&values, 0.999), 999);
        assert_eq!(quantile(&values, 1.0), 1000);
        assert_eq!(quantile(&[7], 0.999), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn reads_own_cpu_time() {
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(own_cpu_seconds() > 0.0);
    }

    #[test]
    fn a_stat_line_names_its_thread_even_with_spaces_and_parentheses_in_the_name() {
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let line = "4242 (tokio (rt) 1) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let (name, seconds) = parse_stat(line).expect("a well-formed line");
        assert_eq!(name, "tokio (rt) 1");
        assert!((seconds - 300.0 / ticks).abs() < 1e-9, "utime + stime: {seconds}");
        assert_eq!(
            parse_stat("4242 (cut short) S 1 2"),
            None,
            "a line without its times"
        );
    }

    #[test]
    fn each_thread_of_a_process_is_read_by_name() {
        let busy = std::thread::Builder::new()
            .name("stats-probe".into())
            .spawn(|| {
                let mut x = 0u64;
                for i in 0..50_000_000u64 {
                    x = x.wrapping_mul(31).wrapping_add(i);
                }
                let me = std::process::id();
                (x, thread_cpu_seconds(me))
            })
            .unwrap();
        let (x, threads) = busy.join().unwrap();
        assert!(x != 1);
        let probe = threads.iter().find(|(_, name, _)| name == "stats-probe");
        let (tid, _, seconds) = probe.expect("the spawned thread is listed under its name");
        assert!(*seconds > 0.0, "it used CPU");
        assert_ne!(*tid, std::process::id(), "by its own id, not the process's");
    }
}
