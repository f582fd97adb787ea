//! The CPU time processes have used, for the load generators' figures: this process's
//! (getrusage) and another's by its PID (`/proc/PID/stat`). Between two readings it is the work
//! a load cost, whatever the machine's other load did to its rate.

/// CPU time this process has used so far, user and system, on all its threads (getrusage).
pub fn this_process() -> Option<std::time::Duration> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let t = |v: nix::sys::time::TimeVal| std::time::Duration::new(v.tv_sec().max(0) as u64, (v.tv_usec().max(0) as u32) * 1000);
    Some(t(u.user_time()) + t(u.system_time()))
}

/// CPU time another process has used so far, user and system, all its threads
/// (`/proc/PID/stat`, in the kernel's USER_HZ ticks of 10 ms); None once it is gone.
pub fn of_process(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in brackets, may hold spaces: the fields are counted after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |field: usize| fields.get(field - 3)?.parse::<u64>().ok();
    Some(std::time::Duration::from_millis((ticks(14)? + ticks(15)?) * 10))
}

/// CPU microseconds per unit of work: `cpu` spent on `count` of them.
pub fn us_per(cpu: std::time::Duration, count: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / count.max(1) as f64
}

/// The units of work per second that `cores` fully busy would allow at `us` CPU microseconds
/// each; None for a cost not above 0.
pub fn rate_allowed(cores: usize, us: f64) -> Option<f64> {
    (us > 0.0).then(|| cores as f64 * 1e6 / us)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// `/proc/PID/stat` read for this process counts the CPU that getrusage counts: spin until
    /// getrusage has seen 300 ms more, then the other reading must have moved as far, less
    /// its 10 ms ticks.
    #[test]
    fn the_proc_reading_of_a_process_counts_the_cpu_getrusage_counts() {
        let pid = std::process::id();
        let (rusage0, proc0) = (this_process().unwrap(), of_process(pid).unwrap());
        let mut x = 0u64;
        while this_process().unwrap() < rusage0 + std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let moved = of_process(pid).unwrap().saturating_sub(proc0);
        assert!(moved >= std::time::Duration::from_millis(270), "/proc saw {moved:?} of at least 300 ms");
        assert_eq!(of_process(u32::MAX), None, "no such process");
    }
}
