//! Entry point: parse, run, and turn the outcome into one line on stderr
//! and an exit code.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use greve::cli::{Cli, Command};
use greve::exit::{self, Failure};

/// Set by the first Ctrl-C: generation stops after the current token.
static CANCEL: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A second Ctrl-C while the first is being honoured quits at once.
    let handler = ctrlc::set_handler(|| {
        if CANCEL.swap(true, Ordering::SeqCst) {
            std::process::exit(Failure::Interrupted.code().into());
        }
    });
    if let Err(e) = handler {
        eprintln!("greve: warning: Ctrl-C will not stop generation cleanly: {e}");
    }
    let threads = match &cli.command {
        Command::Ask(args) => args.model.threads,
        Command::Bench(args) => args.model.threads,
    };
    if let Some(n) = threads {
        // Read by candle and by rayon's global pool when they start.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let result = match &cli.command {
        Command::Ask(args) => greve::ask::run(args, &CANCEL),
        Command::Bench(args) => greve::bench::run(args, &CANCEL),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if exit::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("greve: {}", one_line(&err));
            ExitCode::from(exit::code_for(&err))
        }
    }
}

/// The whole chain on one line, "what failed: why: deeper cause". Only the
/// first line of each cause is kept: candle appends a backtrace to its
/// errors when RUST_BACKTRACE is set, which is noise for a user.
fn one_line(err: &anyhow::Error) -> String {
    err.chain()
        .map(|cause| {
            cause
                .to_string()
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}
