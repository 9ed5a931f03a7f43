//! Failure classes and the exit codes they map to.
//!
//! Every error that reaches `main` is an `anyhow::Error`; the ones raised on
//! purpose carry a [`Failure`] somewhere in their chain so that `main` can pick
//! the documented exit code. Anything unclassified (an I/O error deep inside a
//! dependency, say) exits with 1.

use std::fmt;

/// Why greve stopped. The numbers are part of the interface: scripts test them,
/// and the README documents them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A bad flag or input: empty prompt, invalid UTF-8, prompt too long.
    Usage,
    /// The model path does not exist or cannot be read.
    ModelNotFound,
    /// The model files exist but are not a model greve can run.
    ModelInvalid,
    /// The forward pass or the sampler failed after loading.
    Generation,
    /// The Hub could not be reached, or files are missing while offline.
    Network,
    /// The Hub refused access: a gated or private repo, or a bad token.
    Access,
    /// The user pressed Ctrl-C.
    Interrupted,
}

impl Failure {
    pub const ALL: [Failure; 7] = [
        Failure::Usage,
        Failure::ModelNotFound,
        Failure::ModelInvalid,
        Failure::Generation,
        Failure::Network,
        Failure::Access,
        Failure::Interrupted,
    ];

    /// A few words for `--help`.
    pub fn summary(self) -> &'static str {
        match self {
            Failure::Usage => "usage",
            Failure::ModelNotFound => "model not found",
            Failure::ModelInvalid => "model invalid",
            Failure::Generation => "generation failed",
            Failure::Network => "Hub unreachable",
            Failure::Access => "Hub refused access",
            Failure::Interrupted => "interrupted",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Failure::Usage => 2,
            Failure::ModelNotFound => 3,
            Failure::ModelInvalid => 4,
            Failure::Generation => 5,
            Failure::Network => 6,
            Failure::Access => 7,
            // 128 + SIGINT, what shells report for a process killed by Ctrl-C.
            Failure::Interrupted => 130,
        }
    }

    /// Wraps a message in an error of this class.
    pub fn err(self, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Classified {
            failure: self,
            message: message.into(),
        })
    }
}

/// Every exit code in one line, for `--help` and the man page.
pub fn codes_line() -> String {
    let classes = Failure::ALL.map(|f| format!("{} {}", f.code(), f.summary()));
    format!(
        "Exit codes: 0 success, 1 other error, {}.",
        classes.join(", ")
    )
}

/// An error raised on purpose, carrying its class.
#[derive(Debug)]
pub struct Classified {
    pub failure: Failure,
    message: String,
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Classified {}

/// Adds a failure class to any error, keeping its message as the cause.
pub trait Classify<T> {
    fn classify(self, failure: Failure, context: impl FnOnce() -> String) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> Classify<T> for Result<T, E> {
    fn classify(self, failure: Failure, context: impl FnOnce() -> String) -> anyhow::Result<T> {
        self.map_err(|e| {
            let cause: anyhow::Error = e.into();
            cause.context(Classified {
                failure,
                message: context(),
            })
        })
    }
}

/// The outermost class in an error's chain.
pub fn class_of(err: &anyhow::Error) -> Option<Failure> {
    // `downcast_ref` on the error itself also sees a context added by
    // `classify`; the chain then finds classes raised deeper down.
    err.downcast_ref::<Classified>()
        .or_else(|| err.chain().find_map(|e| e.downcast_ref::<Classified>()))
        .map(|c| c.failure)
}

/// The exit code for an error: its class's, else 1.
pub fn code_for(err: &anyhow::Error) -> u8 {
    class_of(err).map_or(1, Failure::code)
}

/// True when the error is stdout going away (`greve ask ... | head -c 10`):
/// the Unix convention is to stop quietly with success.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The whole chain on one line, "what failed: why: deeper cause". A cause
/// of several lines (a regex's error draws where it failed) is joined with
/// spaces, up to a backtrace, which candle appends to its errors when
/// RUST_BACKTRACE is set: noise for a user.
pub fn one_line(err: &anyhow::Error) -> String {
    let frame = |line: &str| {
        let line = line.trim_start();
        line.starts_with("stack backtrace")
            || line
                .split_once(':')
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    err.chain()
        .map(|cause| {
            let text = cause.to_string();
            let lines: Vec<&str> = text
                .lines()
                .take_while(|l| !frame(l))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            lines.join(" ")
        })
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--help` lists every code, once, in order.
    #[test]
    fn the_help_line_lists_every_code() {
        let line = codes_line();
        let codes: Vec<u8> = line
            .split([' ', ','])
            .filter_map(|word| word.parse().ok())
            .collect();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 7, 130], "{line}");
        for f in Failure::ALL {
            assert!(line.contains(f.summary()), "{line}");
        }
    }

    #[test]
    fn the_outermost_class_decides_the_code() {
        let inner: anyhow::Result<()> = Err(Failure::ModelNotFound.err("no such file"));
        let err = inner
            .classify(Failure::ModelInvalid, || "bad model".into())
            .unwrap_err();
        assert_eq!(code_for(&err), 4);
        assert_eq!(format!("{err:#}"), "bad model: no such file");
    }

    #[test]
    fn unclassified_errors_exit_with_one() {
        assert_eq!(code_for(&anyhow::anyhow!("boom")), 1);
    }

    #[test]
    fn broken_pipe_is_found_through_context() {
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let err = anyhow::Error::new(io).context("writing the reply");
        assert!(is_broken_pipe(&err));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
