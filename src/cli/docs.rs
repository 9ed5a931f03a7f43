//! Shell completions and the man page, generated from the clap definitions.

use std::io::Write;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = super::command();
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
    clap_mangen::Man::new(super::command()).render(&mut out)?;
    out.flush()?;
    Ok(())
}
