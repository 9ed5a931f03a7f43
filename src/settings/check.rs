//! The ranges of values, for flags, environment and the config file alike.

use crate::model::attention::KvType;

/// Threads: 1 to 4 per core. More only slows a run down, and tens of
/// thousands make the thread pools fail to start.
pub fn threads(n: u64) -> Result<u16, String> {
    let cores = crate::system::cores();
    let most = 4 * cores.max(1);
    match u16::try_from(n) {
        Ok(t) if t >= 1 && usize::from(t) <= most => Ok(t),
        _ => Err(format!(
            "must be between 1 and {most} (4 per core; this machine has {cores})"
        )),
    }
}

pub fn non_negative(x: f32) -> Result<f32, String> {
    if x >= 0.0 && x.is_finite() {
        Ok(x)
    } else {
        Err("must be 0 or more".into())
    }
}

pub fn positive(x: f32) -> Result<f32, String> {
    if x > 0.0 && x.is_finite() {
        Ok(x)
    } else {
        Err("must be more than 0".into())
    }
}

pub fn probability(x: f32) -> Result<f32, String> {
    if x > 0.0 && x <= 1.0 {
        Ok(x)
    } else {
        Err("must be in (0, 1]".into())
    }
}

pub fn kv_cache(name: &str) -> Result<KvType, String> {
    match name {
        "f16" => Ok(KvType::F16),
        "q8" => Ok(KvType::Q8),
        _ => Err(format!(
            "{} is not a KV cache type: use f16 or q8",
            crate::messages::short(name)
        )),
    }
}
