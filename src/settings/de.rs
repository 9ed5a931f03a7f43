//! The config file's values, checked as the flags' are.

use serde::{Deserialize, Deserializer};

use super::check;
use crate::model::attention::KvType;
use crate::structured::Format;

fn checked<'de, D: Deserializer<'de>>(
    d: D,
    check: fn(f32) -> Result<f32, String>,
) -> Result<Option<f32>, D::Error> {
    let x = f32::deserialize(d)?;
    check(x).map(Some).map_err(serde::de::Error::custom)
}

pub fn temperature<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    checked(d, check::non_negative)
}

pub fn probability<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    checked(d, check::probability)
}

pub fn positive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
    checked(d, check::positive)
}

pub fn threads<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let n = u64::deserialize(d)?;
    check::threads(n)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub fn kv_cache<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KvType>, D::Error> {
    let name = String::deserialize(d)?;
    check::kv_cache(&name)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub fn format<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Format>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "json" => Ok(Some(Format::Json)),
        "text" => Ok(Some(Format::Text)),
        other => Err(serde::de::Error::custom(format!(
            "{} is not a format: use json or text (a schema goes in json_schema)",
            crate::messages::short(other)
        ))),
    }
}

/// A size: a number of bytes, or a string with a unit ("2G").
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(Some(n)),
        Size::Text(t) => check::size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}
