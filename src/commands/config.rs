//! `greve config`: every setting, its effective value and where it came
//! from; `greve config path`: where the config file is.

use std::io::Write;
use std::path::Path;

use crate::settings::Settings;

pub fn show(settings: &Settings, path: Option<&Path>, path_only: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let path_text = path.map_or("(no config folder on this system)".into(), |p| {
        p.display().to_string()
    });
    if path_only {
        writeln!(out, "{path_text}")?;
        return Ok(());
    }
    let absent = if path.is_some_and(Path::exists) {
        ""
    } else {
        " (absent)"
    };
    writeln!(out, "# config file: {path_text}{absent}")?;
    for (key, value, from) in settings.rows() {
        writeln!(out, "{key:<17} {value:<40} ({})", from.name())?;
    }
    Ok(())
}
