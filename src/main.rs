//! Entry point: parse, run, and turn the outcome into one line on stderr
//! and an exit code.

use std::process::ExitCode;

use greve::cli::Job;
use greve::commands;
use greve::exit::{self, Failure};
use greve::settings::Settings;

fn main() -> ExitCode {
    let invocation = greve::cli::parse();
    greve::messages::configure(invocation.color, invocation.quiet);
    greve::messages::init_logs(invocation.verbose);
    match run(invocation) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if exit::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            greve::messages::error(exit::one_line(&err));
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
    greve::interrupt::install(matches!(job, Job::Chat));
    let cancel = greve::interrupt::cancel();
    if let Some(n) = settings.threads.value {
        // Read by candle and by rayon's global pool when they start.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    match job {
        Job::Ask(request) => commands::ask::run(settings, &request, cancel),
        Job::Chat => commands::chat::run(settings, cancel),
        Job::Serve(options) => greve::server::run(settings, &options, cancel),
        Job::Bench(plan) => commands::bench::run(&settings, &plan, cancel),
        Job::Tokenize(request) => commands::tokenize::run(&settings, &request),
        Job::Models => commands::models::list(),
        Job::Pull => commands::models::pull(&settings),
        Job::Info => commands::models::info(&settings),
        Job::Completions(shell) => greve::cli::docs::completions(shell),
        Job::Man => greve::cli::docs::man(),
        Job::Doctor => commands::doctor::run(&settings),
        Job::Cache { clear } => commands::cache::run(&settings, clear),
        Job::Config { path_only } => {
            commands::config::show(&settings, config_path.as_deref(), path_only)
        }
    }
}
