//! From parsed flags to what the rest of greve takes: a [`Job`] (what to
//! do) and two [`Layer`]s of settings, the flags' and the environment's,
//! told apart by where clap found each value.

use std::io::IsTerminal;
use std::path::Path;

use candle_core::DType;
use clap::parser::ValueSource;
use clap::{ArgMatches, FromArgMatches};

use super::*;
use crate::commands::{ask, bench, tokenize};
use crate::exit::Failure;
use crate::model::attention::KvType;
use crate::settings::Layer;
use crate::structured::{self, Format};
use crate::tools::{Choice, Fault, Tools};

/// What a command asks for, once its settings are set apart.
#[derive(Debug)]
pub enum Job {
    Ask(ask::Request),
    Chat,
    Serve(crate::server::Options),
    Bench(bench::Plan),
    Tokenize(tokenize::Request),
    Models,
    Pull,
    Info,
    /// `greve config` (or `greve config path`, only the file's path).
    Config {
        path_only: bool,
    },
    Doctor,
    /// `greve cache`, or `greve cache clear`.
    Cache {
        clear: bool,
    },
    Completions(clap_complete::Shell),
    Man,
}

/// The parsed command line: the options every command has, then the rest.
pub struct Invocation {
    pub color: anstream::ColorChoice,
    pub quiet: bool,
    pub verbose: u8,
    command: Option<Command>,
    matches: ArgMatches,
}

/// Parses the command line, exiting with clap's message on a usage error
/// (and for --help and --version). Plain `greve` on a terminal is `greve chat`.
pub fn parse() -> Invocation {
    // Naming the GPU means opening it: only for --version itself.
    let mut version = crate::system::long_version();
    if std::env::args_os().any(|a| a == "--version") {
        if let Some(gpu) = crate::system::gpu_version_line() {
            version = format!("{version}\n{gpu}");
        }
    }
    let parse_from = |args: &[&str]| {
        let command = command().long_version(version.clone());
        let matches = match args {
            [] => command.try_get_matches(),
            _ => command.try_get_matches_from(args),
        }
        .unwrap_or_else(|e| usage_exit(e));
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| usage_exit(e));
        (cli, matches)
    };
    let (mut cli, mut matches) = parse_from(&[]);
    if cli.command.is_none() && std::io::stdin().is_terminal() && std::io::stdout().is_terminal() {
        // Flags before the command stay; the chat's own come from the environment.
        let (chat, chat_matches) = parse_from(&["greve", "chat"]);
        (cli.command, matches) = (chat.command, chat_matches);
    }
    Invocation {
        color: match cli.color {
            clap::ColorChoice::Auto => anstream::ColorChoice::Auto,
            clap::ColorChoice::Always => anstream::ColorChoice::Always,
            clap::ColorChoice::Never => anstream::ColorChoice::Never,
        },
        quiet: cli.quiet,
        verbose: cli.verbose,
        command: cli.command,
        matches,
    }
}

/// Clap's usage errors as greve's others: one line, exit 2 (clap's tips
/// kept, its usage summary left to --help). Help and version go out as
/// clap prints them.
fn usage_exit(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    let text = e.to_string();
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect();
    crate::messages::error(format!("{}; see --help", parts.join("; ")));
    std::process::exit(Failure::Usage.code().into())
}

impl Invocation {
    /// The job, and what the flags and the environment say about the
    /// settings; `None` when no command was given.
    pub fn job(self) -> anyhow::Result<Option<(Job, Layer, Layer)>> {
        let Some(command) = self.command else {
            return Ok(None);
        };
        let sub = self.matches.subcommand().map_or(&self.matches, |(_, m)| m);
        let (job, mut flags) = command.into_job()?;
        let env = env_layer(&mut flags, sub);
        Ok(Some((job, flags, env)))
    }
}

impl Command {
    /// The job, and every setting given, by flag or environment alike.
    fn into_job(self) -> anyhow::Result<(Job, Layer)> {
        let mut l = Layer::default();
        let job = match self {
            Command::Ask(a) => {
                a.turn.fill(&mut l)?;
                l.remote = a.remote.remote;
                (l.load, l.save) = (a.load, a.save);
                let tool_results = a.tools.tool_result.clone();
                l.tools = a.tools.read()?;
                Job::Ask(ask::Request {
                    tool_results,
                    prompt: a.prompt,
                    json: a.json,
                    stats: a.stats,
                    verbose_prompt: a.verbose_prompt,
                    think: a.think,
                })
            }
            Command::Chat(a) => {
                a.turn.fill(&mut l)?;
                l.remote = a.remote.remote;
                l.load = a.load;
                l.history = a.no_history.then_some(false);
                Job::Chat
            }
            Command::Serve(a) => {
                a.turn.fill(&mut l)?;
                Job::Serve(crate::server::Options {
                    host: a.host,
                    port: a.port,
                    api_key: a.api_key,
                    cors: a.cors,
                    queue: a.queue.into(),
                    parallel: a.parallel.into(),
                    timeout: std::time::Duration::from_secs(a.timeout.into()),
                })
            }
            Command::Bench(a) => {
                a.model.fill(&mut l);
                a.format.fill(&mut l)?;
                Job::Bench(bench::Plan {
                    prompt_tokens: a.prompt_tokens,
                    gen_tokens: a.gen_tokens,
                    repetitions: a.repetitions,
                    depth: a.depth,
                    candle: a.baseline.is_some(),
                    breakdown: a.breakdown,
                    parallel: a.parallel.into(),
                    json: a.json,
                })
            }
            Command::Tokenize(a) => {
                l.model = a.model;
                a.hub.fill(&mut l);
                Job::Tokenize(tokenize::Request {
                    text: a.text,
                    no_bos: a.no_bos,
                    special: a.special,
                    pieces: a.pieces,
                    json: a.json,
                    decode: a.decode,
                    chat: a.chat,
                    text_out: a.text_out,
                })
            }
            Command::Pull(a) => {
                l.model = a.model;
                a.hub.fill(&mut l);
                Job::Pull
            }
            Command::Info(a) => {
                a.model.fill(&mut l);
                Job::Info
            }
            Command::Doctor(a) => {
                a.model.fill(&mut l);
                Job::Doctor
            }
            Command::Config(a) => {
                a.turn.fill(&mut l)?;
                l.remote = a.remote.remote;
                Job::Config {
                    path_only: a.action.as_deref() == Some("path"),
                }
            }
            Command::Models => Job::Models,
            Command::Cache(a) => Job::Cache {
                clear: a.action == Some(CacheAction::Clear),
            },
            Command::Completions(a) => Job::Completions(a.shell),
            Command::Man => Job::Man,
        };
        Ok((job, l))
    }
}

/// Moves out of `flags` the values that came from `GREVE_*` variables.
fn env_layer(flags: &mut Layer, matches: &ArgMatches) -> Layer {
    let given = |id: &str| matches.ids().any(|i| i == id);
    let from_env =
        |id: &str| given(id) && matches.value_source(id) == Some(ValueSource::EnvVariable);
    let mut env = Layer::default();
    macro_rules! take {
        ($($field:ident),*) => {$(
            if from_env(stringify!($field)) {
                env.$field = flags.$field.take();
            }
        )*};
    }
    take!(
        model,
        remote,
        quant,
        device,
        threads,
        kv_cache,
        ctx_size,
        temperature,
        top_p,
        top_k,
        repeat_penalty,
        repeat_last_n,
        seed,
        max_tokens,
        prompts
    );
    // `--no-strike` is a flag that overrides GREVE_STRIKE.
    if from_env("strike") && !(given("no_strike") && matches.get_flag("no_strike")) {
        env.strike = flags.strike.take();
    }
    env
}

impl TurnArgs {
    fn fill(self, l: &mut Layer) -> anyhow::Result<()> {
        self.system.fill(l)?;
        self.persona.fill(l);
        self.model.fill(l);
        self.sampling.fill(l);
        l.prompt_cache = self.no_prompt_cache.then_some(false);
        self.format.fill(l)
    }
}

impl FormatArgs {
    fn fill(self, l: &mut Layer) -> anyhow::Result<()> {
        let usage =
            |flag: &'static str| move |e: String| Failure::Usage.err(format!("{flag}: {e}"));
        if let Some(path) = self.grammar {
            l.format =
                Some(structured::from_file(&path, structured::lark).map_err(usage("--grammar"))?);
            return Ok(());
        }
        l.format = match (self.format, self.json_schema) {
            (Some(FormatArg::Json), _) => Some(Format::Json),
            (Some(FormatArg::Text), _) => Some(Format::Text),
            (None, Some(schema)) if schema.trim_start().starts_with('{') => {
                Some(structured::schema(&schema).map_err(usage("--json-schema"))?)
            }
            (None, Some(path)) => Some(
                structured::from_file(Path::new(&path), structured::schema)
                    .map_err(usage("--json-schema"))?,
            ),
            (None, None) => None,
        };
        Ok(())
    }
}

impl ToolArgs {
    /// The tools of `--tools`, checked, with their choice.
    fn read(&self) -> anyhow::Result<Option<Tools>> {
        let Some(path) = &self.tools else {
            return Ok(None);
        };
        let bad = |e: String| Failure::Usage.err(format!("--tools {}: {e}", path.display()));
        let text = crate::text_file::read_user(path, "--tools", 16 << 20)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON ({e})")))?;
        // The list alone, or a request body that holds it.
        let list = value.get("tools").unwrap_or(&value);
        let list = crate::server::api::tools(list).map_err(|e| bad(e.message))?;
        let choice = match &self.tool_choice {
            Some(choice) => choice
                .parse()
                .map_err(|e| Failure::Usage.err(format!("--tool-choice: {e}")))?,
            None => Choice::Auto,
        };
        let tools = Tools {
            list,
            choice,
            parallel: !self.no_parallel_tool_calls,
        };
        tools.check().map_err(|fault| match fault {
            Fault::Choice(why) => Failure::Usage.err(format!("--tool-choice: {why}")),
            Fault::Schema { tool, why } => bad(format!("tools[{tool}].function.parameters: {why}")),
        })?;
        Ok(Some(tools))
    }
}

impl SystemArgs {
    fn fill(self, l: &mut Layer) -> anyhow::Result<()> {
        l.system = match (self.system, self.system_file) {
            (Some(text), _) => Some(text),
            (None, Some(path)) => Some(crate::text_file::read_user(
                &path,
                "--system-file",
                1 << 20,
            )?),
            (None, None) => None,
        };
        Ok(())
    }
}

impl PersonaArgs {
    fn fill(self, l: &mut Layer) {
        l.strike = if self.no_strike {
            Some(Mode::Off)
        } else {
            self.strike
        };
        l.safe = self.safe.then_some(true);
        l.prompts = self.prompts;
    }
}

impl HubArgs {
    fn fill(self, l: &mut Layer) {
        l.quant = self.quant;
        l.revision = self.revision;
        l.offline = self.offline.then_some(true);
    }
}

impl ModelArgs {
    fn fill(self, l: &mut Layer) {
        l.model = self.model;
        self.hub.fill(l);
        l.device = self.device;
        l.dtype = self.dtype.map(|d| match d {
            DtypeArg::F32 => DType::F32,
            DtypeArg::F16 => DType::F16,
            DtypeArg::Bf16 => DType::BF16,
        });
        l.threads = self.threads;
        l.kv_cache = self.kv_cache.map(|k| match k {
            KvCacheArg::F16 => KvType::F16,
            KvCacheArg::Q8 => KvType::Q8,
        });
        l.ctx_size = self.ctx_size;
    }
}

impl SamplingArgs {
    fn fill(self, l: &mut Layer) {
        l.temperature = self.temperature;
        l.top_p = self.top_p;
        l.top_k = self.top_k;
        l.repeat_penalty = self.repeat_penalty;
        l.repeat_last_n = self.repeat_last_n;
        l.seed = self.seed;
        l.max_tokens = self.max_tokens;
    }
}
