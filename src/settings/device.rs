//! `--device`: which device a name means, and why it cannot be had.

use candle_core::Device;

use crate::exit::Failure;

/// `auto` takes the GPU this build supports when one is there, else the CPU.
pub fn device(spec: &str) -> anyhow::Result<Device> {
    let unknown = || {
        Failure::Usage.err(format!(
            "--device {spec:?} is not a device: use auto, cpu, cuda, cuda:N or metal"
        ))
    };
    match spec {
        "auto" => Ok(auto_device()),
        "cpu" => Ok(Device::Cpu),
        "metal" => gpu("metal", cfg!(feature = "metal"), || Device::new_metal(0)),
        "cuda" => gpu("cuda", cfg!(feature = "cuda"), || open_cuda(0)),
        _ => {
            let ordinal = spec.strip_prefix("cuda:").ok_or_else(unknown)?;
            let n: usize = ordinal.parse().map_err(|_| unknown())?;
            gpu("cuda", cfg!(feature = "cuda"), || open_cuda(n))
        }
    }
}

fn auto_device() -> Device {
    if cfg!(feature = "cuda") {
        if let Ok(d) = open_cuda(0) {
            return d;
        }
    }
    if cfg!(feature = "metal") {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}

/// CUDA device `ordinal`, without cudarc's event tracking: tracking orders
/// work across several streams, but greve runs everything on one (candle's,
/// which cuBLAS shares), and with it on every tensor allocation creates and
/// later destroys two CUDA events that nothing waits on: four driver calls
/// per operation, several hundred operations per generated token.
fn open_cuda(ordinal: usize) -> candle_core::Result<Device> {
    let device = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = &device {
        // SAFETY: one stream, so no tensor is used on another stream than
        // the one that allocated it (the contract tracking would enforce).
        unsafe { cuda.disable_event_tracking() }
    }
    Ok(device)
}

fn gpu(
    feature: &str,
    built: bool,
    open: impl FnOnce() -> candle_core::Result<Device>,
) -> anyhow::Result<Device> {
    if !built {
        return Err(Failure::Usage.err(format!(
            "this greve was built without {feature} support; rebuild with `cargo install --path . --features {feature}` or use --device cpu"
        )));
    }
    open().map_err(|e| Failure::Usage.err(format!("cannot open the {feature} device: {e}")))
}
