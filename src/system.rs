//! Small facts about the machine and the process: memory, cores, peak
//! footprint. Below every other module, so that the Hub, the model and the
//! front ends can all ask without importing one another.

/// The cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// MemAvailable from /proc/meminfo, in bytes (None off Linux).
pub fn available_memory() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable:").map(|kib| kib * 1024)
}

/// The process's peak resident memory (Linux's VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    proc_kib("/proc/self/status", "VmHWM:").map(|kib| kib * 1024)
}

/// The number on the `key` line of a /proc file, in kB there.
fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_reports_memory_and_peak() {
        assert!(cores() >= 1);
        if cfg!(target_os = "linux") {
            assert!(available_memory().unwrap() > 0);
            assert!(peak_rss().unwrap() > 0);
        }
    }
}
