//! greve's own lines on stderr: errors, warnings and notes, each with the
//! `greve:` prefix, coloured only where it helps. `anstream` drops the
//! colours when stderr is not a terminal and honours `NO_COLOR` and
//! `CLICOLOR_FORCE`; `--color` overrides. `--quiet` silences the notes.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};

use anstyle::{AnsiColor, Style};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Colours on stderr and stdout (`Auto`: on a terminal, unless NO_COLOR is
/// set), and whether notes are shown.
pub fn configure(color: anstream::ColorChoice, quiet: bool) {
    color.write_global();
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Diagnostic logs: `RUST_LOG` as usual, `-v` (info) and `-vv` (debug)
/// for greve's own.
pub fn init_logs(verbose: u8) {
    let mut logs =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"));
    match verbose {
        0 => {}
        1 => {
            logs.filter_module("greve", log::LevelFilter::Info);
        }
        _ => {
            logs.filter_module("greve", log::LevelFilter::Debug);
        }
    }
    logs.format(|buf, record| {
        use std::io::Write;
        writeln!(
            buf,
            "greve: [{}] {}",
            record.level().as_str().to_lowercase(),
            record.args()
        )
    });
    // A second initialisation (tests) is harmless.
    let _ = logs.try_init();
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

pub fn error(message: impl Display) {
    let style = Style::new().bold().fg_color(Some(AnsiColor::Red.into()));
    anstream::eprintln!("{style}greve:{style:#} {message}");
}

pub fn warn(message: impl Display) {
    let style = Style::new().bold().fg_color(Some(AnsiColor::Yellow.into()));
    anstream::eprintln!("{style}greve: warning:{style:#} {message}");
}

/// Progress and context; silenced by `--quiet`.
pub fn note(message: impl Display) {
    if !quiet() {
        let style = Style::new().dimmed();
        anstream::eprintln!("{style}greve:{style:#} {message}");
    }
}

/// Text for stdout in `style` when stdout takes colours (a terminal, no
/// NO_COLOR, or --color always), else as it is: the persona's letterhead
/// stands out on a screen and stays plain in a pipe.
pub fn for_stdout(text: &str, style: Style) -> String {
    if anstream::AutoStream::choice(&std::io::stdout()) == anstream::ColorChoice::Never {
        text.to_string()
    } else {
        format!("{style}{text}{style:#}")
    }
}

pub fn letterhead_style() -> Style {
    Style::new().bold().fg_color(Some(AnsiColor::Red.into()))
}

pub fn thinking_style() -> Style {
    Style::new().dimmed()
}

pub fn signoff_style() -> Style {
    Style::new().italic()
}

pub fn prompt_style() -> Style {
    Style::new().bold().fg_color(Some(AnsiColor::Cyan.into()))
}

/// User data quoted in a message: escaped, in quotes, and cut after 48
/// characters with `…`, so that a forged 100 KB name or an escape sequence
/// in a file can neither flood nor drive the user's terminal.
pub fn short(s: &str) -> String {
    quoted(s, 48)
}

/// `s` escaped, in quotes, cut after `max` characters with `…`.
pub fn quoted(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
    }
}

/// Bytes for people: MiB below a GiB, GiB above.
pub fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1 << 30 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
    }
}
