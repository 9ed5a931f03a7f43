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

/// A size on disk: bytes, or a number with K, M, G or T (powers of 1024,
/// `G`, `GB` and `GiB` alike).
pub fn size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{} is not a size: write e.g. 2G, 500M or a number of bytes",
            crate::messages::short(text)
        )
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let shift = match unit.trim().trim_end_matches("iB").trim_end_matches('B') {
        "" => 0,
        "K" | "k" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    let x: f64 = number.parse().map_err(|_| bad())?;
    let bytes = x * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(super::size("2G"), Ok(2 << 30));
        assert_eq!(super::size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(super::size("500MB"), Ok(500 << 20));
        assert_eq!(super::size("4096"), Ok(4096));
        assert_eq!(super::size("0"), Ok(0));
        for bad in ["", "G", "2X", "-1G", "1e400", "2 GG"] {
            assert!(super::size(bad).is_err(), "{bad}");
        }
    }
}
