//! `--device`: which device a name means, and why it cannot be had.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::exit::Failure;

/// Where a model runs, as `--device`, `GREVE_DEVICE` and the config file
/// name it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The GPU this build supports when one is there, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The CUDA device of this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
    Metal,
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let unknown = || {
            format!(
                "{} is not a device: use auto, cpu, cuda, cuda:N or metal",
                crate::messages::short(s)
            )
        };
        Ok(match s {
            "auto" => DeviceSpec::Auto,
            "cpu" => DeviceSpec::Cpu,
            "metal" => DeviceSpec::Metal,
            "cuda" => DeviceSpec::Cuda(0),
            _ => {
                let ordinal = s.strip_prefix("cuda:").ok_or_else(unknown)?;
                DeviceSpec::Cuda(ordinal.parse().map_err(|_| unknown())?)
            }
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(0) => f.write_str("cuda"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => f.write_str("metal"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl DeviceSpec {
    /// The device, or why this build or machine cannot give it.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            DeviceSpec::Auto => Ok(auto_device()),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Metal => gpu("metal", cfg!(feature = "metal"), || Device::new_metal(0)),
            DeviceSpec::Cuda(n) => gpu("cuda", cfg!(feature = "cuda"), || open_cuda(n)),
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
