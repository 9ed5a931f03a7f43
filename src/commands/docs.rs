//! What greve says about itself: the long version with its build, shell
//! completions and the man page, all generated from the clap definitions.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;

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

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "greve", &mut script);
    let script = with_presets(shell, &String::from_utf8_lossy(&script));
    let mut out = std::io::stdout().lock();
    out.write_all(script.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `--model` takes a path or a preset name. clap_complete offers either
/// files or fixed values for an option, not both, so the preset names are
/// added to the file completion here, for the shells whose scripts allow it
/// simply (bash, fish); the others complete paths.
fn with_presets(shell: clap_complete::Shell, script: &str) -> String {
    let names: Vec<&str> = crate::hub::PRESETS.iter().map(|p| p.name).collect();
    let names = names.join(" ");
    match shell {
        clap_complete::Shell::Bash => {
            let files = "COMPREPLY=($(compgen -f \"${cur}\"))";
            let both = format!("COMPREPLY=($(compgen -f -W \"{names}\" -- \"${{cur}}\"))");
            let mut out = String::with_capacity(script.len());
            let mut model_option = false;
            for line in script.lines() {
                let trimmed = line.trim();
                if model_option && trimmed == files {
                    out.push_str(&line.replace(files, &both));
                } else {
                    out.push_str(line);
                }
                out.push('\n');
                model_option = trimmed == "--model)" || trimmed == "-m)";
            }
            out
        }
        clap_complete::Shell::Fish => script
            .lines()
            .map(|line| {
                if line.contains(" -l model ") && line.ends_with(" -r") {
                    format!("{line} -a '{names}'\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect(),
        _ => script.to_string(),
    }
}

pub fn man() -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
