//! `greve cache`: where the prompt cache is and what it holds;
//! `greve cache clear` empties it (see `prompt_cache.rs`).

use crate::exit::{Classify, Failure};
use crate::prompt_cache;
use crate::settings::Settings;

pub fn run(settings: &Settings, clear: bool) -> anyhow::Result<()> {
    // Shown and cleared even when turned off: it may hold an earlier run's.
    let Some(dir) = prompt_cache::default_dir() else {
        return Err(Failure::Usage.err(
            "this system has no cache folder (no home directory): greve keeps no prompt cache",
        ));
    };
    if clear {
        let (entries, bytes) = prompt_cache::clear(&dir).classify(Failure::Usage, || {
            format!("cannot empty the prompt cache {}", dir.display())
        })?;
        println!(
            "removed {entries} entries ({}) from {}",
            crate::messages::size(bytes),
            dir.display()
        );
        return Ok(());
    }
    let (entries, bytes) = prompt_cache::usage(&dir);
    let state = match settings.prompt_cache.value {
        true => "on",
        false => "off (prompt_cache = false)",
    };
    println!("{}", dir.display());
    println!(
        "{entries} entries, {} of at most {} (prompt_cache_size); {state}",
        crate::messages::size(bytes),
        crate::messages::size(settings.prompt_cache_size.value)
    );
    Ok(())
}
