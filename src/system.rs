//! Small facts about the machine, the process and the build: memory,
//! cores, peak footprint, what the binary was compiled for. Below every other module, so that the Hub, the model and the
//! front ends can all ask without importing one another.

/// The cores this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// MemAvailable from /proc/meminfo, in bytes (None off Linux).
pub fn available_memory() -> Option<u64> {
    proc_kib("/proc/meminfo", "MemAvailable:").map(|kib| kib * 1024)
}

/// The process's peak resident memory, in bytes: Linux's VmHWM (its
/// getrusage figure keeps the high-water mark of the process before exec).
#[cfg(target_os = "linux")]
pub fn peak_rss() -> Option<u64> {
    proc_kib("/proc/self/status", "VmHWM:").map(|kib| kib * 1024)
}

/// The process's peak resident memory, in bytes (getrusage counts bytes on macOS).
#[cfg(target_os = "macos")]
pub fn peak_rss() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage only writes the struct it is handed.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: zeroed is a valid rusage, and getrusage succeeded.
    u64::try_from(unsafe { usage.assume_init() }.ru_maxrss).ok()
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub fn peak_rss() -> Option<u64> {
    None
}

/// The number on the `key` line of a /proc file, in kB there.
fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The version line and how this binary was built: its GPU backends and
/// the CPU features compiled in. greve's own kernels choose AVX2 or
/// AVX-512 at run time whatever the build; candle's follow the build.
pub fn long_version() -> String {
    let compiled = [
        ("avx", cfg!(target_feature = "avx")),
        ("avx2", cfg!(target_feature = "avx2")),
        ("fma", cfg!(target_feature = "fma")),
        ("f16c", cfg!(target_feature = "f16c")),
        ("avx512f", cfg!(target_feature = "avx512f")),
        ("neon", cfg!(target_feature = "neon")),
    ];
    let cpu: Vec<&str> = compiled.iter().filter(|f| f.1).map(|f| f.0).collect();
    let gpu: Vec<&str> = [
        ("cuda", cfg!(feature = "cuda")),
        ("metal", cfg!(feature = "metal")),
    ]
    .iter()
    .filter(|f| f.1)
    .map(|f| f.0)
    .collect();
    format!(
        "{}\nbuilt for {} with CPU features: {}\nGPU backends: {}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        if cpu.is_empty() {
            "baseline (greve's kernels choose at run time)".to_string()
        } else {
            cpu.join(" ")
        },
        if gpu.is_empty() {
            "none (cargo features cuda, metal)".to_string()
        } else {
            gpu.join(" ")
        }
    )
}

/// The GPU behind `device` in words (model, memory, compute capability, the
/// driver's CUDA version), for `--version` and `greve doctor`; None for the
/// CPU, or when the driver does not say.
pub fn gpu_line(device: &candle_core::Device) -> Option<String> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => cuda_line(d),
        _ => None,
    }
}

#[cfg(feature = "cuda")]
fn cuda_line(device: &candle_core::CudaDevice) -> Option<String> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let stream = device.cuda_stream();
    let gpu = stream.context();
    let (free, total) = gpu.mem_get_info().ok()?;
    let (major, minor) = gpu.compute_capability().ok()?;
    let mut cuda = 0;
    // SAFETY: cuDriverGetVersion writes one int; the driver is initialised,
    // as a context exists.
    let driver = unsafe { sys::cuDriverGetVersion(&mut cuda) };
    let cuda = match driver {
        sys::CUresult::CUDA_SUCCESS => format!("{}.{}", cuda / 1000, cuda % 1000 / 10),
        _ => "unknown".into(),
    };
    Some(format!(
        "{}, {:.1} GB ({:.1} GB free), compute capability {major}.{minor}, CUDA {cuda} (driver)",
        gpu.name().ok()?,
        total as f64 / 1e9,
        free as f64 / 1e9,
    ))
}

/// What `--version` says about the GPU of a GPU build: device 0, or why it
/// does not open. Asked only for `--version` (opening a device takes time).
pub fn gpu_version_line() -> Option<String> {
    let open = if cfg!(feature = "cuda") {
        candle_core::Device::new_cuda(0)
    } else if cfg!(feature = "metal") {
        candle_core::Device::new_metal(0)
    } else {
        return None;
    };
    Some(match open {
        Ok(device) => format!(
            "GPU 0: {}",
            gpu_line(&device).unwrap_or_else(|| format!("{device:?}"))
        ),
        Err(e) => format!("GPU: none opens ({})", first_line(&e)),
    })
}

/// An error's first line: candle appends a backtrace when RUST_BACKTRACE is set.
pub fn first_line(e: &impl std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// Whether `tool` (a name on the PATH, or a path) is there, for a test that
/// needs it. When it is not, the test prints one line saying so and how to
/// install it, and skips its work, unless `GREVE_TEST_ALL` is set (as
/// `.ci/run` sets it, after installing every tool): then it fails.
#[doc(hidden)]
pub fn test_tool(tool: &str, install: &str) -> bool {
    let found = match tool.contains('/') {
        true => std::path::Path::new(tool).is_file(),
        false => std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file())),
    };
    if found {
        return true;
    }
    let demanded = std::env::var_os("GREVE_TEST_ALL").is_some_and(|v| !v.is_empty());
    assert!(
        !demanded,
        "{tool} is missing, and GREVE_TEST_ALL demands every test: {install}"
    );
    // To the stream itself: the test harness keeps what a passing test
    // prints with eprintln!.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped: a test needs {tool}, which is not installed ({install})"
    );
    false
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

    #[test]
    fn the_long_version_names_the_build() {
        let v = long_version();
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(v.contains("CPU features:") && v.contains("GPU backends:"));
        if cfg!(target_feature = "avx2") {
            assert!(v.contains("avx2"));
        }
    }
}
