//! Entry point: parse, run, and turn the outcome into one line on stderr
//! and an exit code.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use greve::cli::Job;
use greve::commands;
use greve::exit::{self, Failure};
use greve::settings::Settings;

/// Set by the first Ctrl-C: generation stops after the current token.
static CANCEL: AtomicBool = AtomicBool::new(false);

/// Whether a second Ctrl-C quits at once. Not in a chat, where quitting
/// would lose the conversation: there Ctrl-C only ever stops a reply.
static QUIT_ON_SECOND: AtomicBool = AtomicBool::new(true);

fn main() -> ExitCode {
    let invocation = greve::cli::parse();
    greve::messages::configure(invocation.color, invocation.quiet);
    greve::messages::init_logs(invocation.verbose);
    match run(invocation) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if exit::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            greve::messages::error(one_line(&err));
            ExitCode::from(exit::code_for(&err))
        }
    }
}

fn run(invocation: greve::cli::Invocation) -> anyhow::Result<()> {
    let Some((job, flags, env)) = invocation.job()? else {
        return Err(Failure::Usage
            .err("no command; try `greve ask PROMPT`, `greve chat` or `greve --help`"));
    };
    let config_path = greve::config_file::path();
    let file = greve::config_file::load(config_path.as_deref())?;
    let settings = Settings::resolve(&flags, &env, &file);
    if matches!(job, Job::Chat) {
        QUIT_ON_SECOND.store(false, Ordering::SeqCst);
    }
    // A second Ctrl-C while the first is being honoured quits at once.
    let handler = ctrlc::set_handler(|| {
        if CANCEL.swap(true, Ordering::SeqCst) && QUIT_ON_SECOND.load(Ordering::SeqCst) {
            std::process::exit(Failure::Interrupted.code().into());
        }
    });
    if let Err(e) = handler {
        greve::messages::warn(format!("Ctrl-C will not stop generation cleanly: {e}"));
    }
    if let Some(n) = settings.threads.value {
        // Read by candle and by rayon's global pool when they start.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    match job {
        Job::Ask(request) => commands::ask::run(settings, &request, &CANCEL),
        Job::Chat => commands::chat::run(settings, &CANCEL),
        Job::Bench(plan) => commands::bench::run(&settings, &plan, &CANCEL),
        Job::Tokenize(request) => commands::tokenize::run(&settings, &request),
        Job::Models => commands::models::list(),
        Job::Pull => commands::models::pull(&settings),
        Job::Info => commands::models::info(&settings),
        Job::Completions(shell) => greve::cli::docs::completions(shell),
        Job::Man => greve::cli::docs::man(),
        Job::Doctor => commands::doctor::run(&settings),
        Job::Config { path_only } => {
            commands::config::show(&settings, config_path.as_deref(), path_only)
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
