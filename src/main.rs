//! Entry point: parse, run, and turn the outcome into one line on stderr
//! and an exit code.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{CommandFactory, FromArgMatches, Parser};
use greve::cli::{Cli, Command};
use greve::exit::{self, Failure};

/// Set by the first Ctrl-C: generation stops after the current token.
static CANCEL: AtomicBool = AtomicBool::new(false);

/// Whether a second Ctrl-C quits at once. Not in a chat, where quitting
/// would lose the conversation: there Ctrl-C only ever stops a reply.
static QUIT_ON_SECOND: AtomicBool = AtomicBool::new(true);

fn main() -> ExitCode {
    let matches = Cli::command()
        .long_version(greve::docs::long_version())
        .get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    greve::messages::configure(cli.color, cli.quiet);
    greve::messages::init_logs(cli.verbose);
    let config_path = greve::config::path();
    let file_config = match greve::config::load(config_path.as_deref()) {
        Ok(c) => c,
        Err(err) => {
            greve::messages::error(one_line(&err));
            return ExitCode::from(exit::code_for(&err));
        }
    };
    if cli.command.is_none() {
        use std::io::IsTerminal;
        if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
            greve::messages::error(
                "no command; try `greve ask PROMPT`, `greve chat` or `greve --help`",
            );
            return ExitCode::from(Failure::Usage.code());
        }
        // Plain `greve` in a terminal is `greve chat`, flags from the environment.
        cli = Cli::parse_from(["greve", "chat"]);
    }
    if let Some(command) = &mut cli.command {
        file_config.apply(command);
    }
    if matches!(cli.command, Some(Command::Chat(_))) {
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
    let threads = match &cli.command {
        Some(Command::Ask(args)) => args.model.threads,
        Some(Command::Chat(args)) => args.model.threads,
        Some(Command::Bench(args)) => args.model.threads,
        _ => None,
    };
    if let Some(n) = threads {
        // Read by candle and by rayon's global pool when they start.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let result = match &cli.command {
        Some(Command::Ask(args)) => greve::ask::run(args, &CANCEL),
        Some(Command::Chat(args)) => greve::repl::run(args, &CANCEL),
        Some(Command::Bench(args)) => greve::bench::run(args, &CANCEL),
        Some(Command::Tokenize(args)) => greve::tokenize::run(args),
        Some(Command::Models) => greve::models::list(),
        Some(Command::Pull(args)) => greve::models::pull(args),
        Some(Command::Info(args)) => greve::models::info(args),
        Some(Command::Completions(args)) => greve::docs::completions(args.shell),
        Some(Command::Man) => greve::docs::man(),
        Some(Command::Doctor(args)) => greve::doctor::run(args),
        Some(Command::Config(args)) => {
            let sub = matches.subcommand_matches("config").unwrap_or(&matches);
            greve::config::show(args, sub, &file_config, config_path.as_deref())
        }
        None => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if exit::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            greve::messages::error(one_line(&err));
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
