//! The command line: clap types, whose doc comments are the `--help` text,
//! turned (`job.rs`) into a [`Job`] and the flag and environment layers of
//! the settings. No other module sees a clap type (but the completions and
//! the man page, made from these definitions). What values mean, and which
//! one wins, is `settings.rs`'s business.

pub mod docs;
mod job;

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

pub use job::{parse, Invocation, Job};

use crate::persona::Mode;
use crate::settings::check;

#[derive(Parser, Debug)]
#[command(
    name = "greve",
    version,
    about = "Chat with Mistral 7B on your own machine."
)]
pub struct Cli {
    /// Without a command, greve chats when stdin and stdout are a terminal.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Colours in greve's messages: auto (on a terminal, unless NO_COLOR is
    /// set), always or never.
    #[arg(
        long,
        value_enum,
        default_value = "auto",
        global = true,
        value_name = "WHEN"
    )]
    pub color: clap::ColorChoice,

    /// Only the reply and errors: no notes, no download progress.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,

    /// Diagnostic logs on stderr for bug reports: -v for the main steps
    /// (load times, dtype, device, cache hits), -vv for more. RUST_LOG
    /// works too (RUST_LOG=debug includes candle and hf-hub).
    #[arg(long, short = 'v', action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// The command line's definition, with what the derive cannot compute.
pub fn command() -> clap::Command {
    Cli::command().after_help(crate::exit::codes_line())
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Answer one prompt and exit: the reply alone on stdout.
    ///
    /// The prompt comes from the arguments, or from stdin when there is none
    /// or it is `-`.
    Ask(AskArgs),

    /// Chat with the model: a conversation in the terminal.
    ///
    /// When stdin is not a terminal, reads one message per line (or per
    /// """ block) and prints each reply followed by a blank line; the first
    /// failure, if any, is its exit code.
    Chat(ChatArgs),

    /// Show the token ids the model sees for a text or a conversation,
    /// without loading weights.
    Tokenize(TokenizeArgs),

    /// List the preset models: what they are, their size and what they need.
    Models,

    /// Download a model into the Hub cache without chatting.
    Pull(PullArgs),

    /// Serve the model over HTTP with OpenAI's chat-completions API, for
    /// editors, agents and OpenAI client libraries.
    ///
    /// POST /v1/chat/completions (streamed or not), GET /v1/models, GET
    /// /health; the settings of `ask` are the defaults of every request.
    /// docs/server.md lists the fields supported.
    Serve(ServeArgs),

    /// Show what a model resolves to: files, format, context, tokenizer,
    /// device; no weights are loaded.
    Info(InfoArgs),

    /// Show the effective settings and where each comes from (flag,
    /// environment, config file, default); `greve config path` prints the
    /// config file's path.
    Config(ConfigArgs),

    /// Check the installation: build, CPU features, memory, GPU, Hub cache
    /// and token, Hub reachability, and the instruct template.
    Doctor(DoctorArgs),

    /// Show the prompt cache: where it is, what it holds, its limit;
    /// `greve cache clear` empties it.
    ///
    /// It keeps the keys and values of system prompts (the persona's too)
    /// and of saved conversations, so that they are not computed again.
    Cache(CacheArgs),

    /// Print a shell completion script: bash, zsh, fish, powershell or elvish.
    ///
    /// bash: `greve completions bash > ~/.local/share/bash-completion/completions/greve`;
    /// zsh: into a folder of $fpath as `_greve`; fish: `~/.config/fish/completions/greve.fish`.
    Completions(CompletionsArgs),

    /// Print the man page (roff): `greve man > ~/.local/share/man/man1/greve.1`.
    Man,

    /// Measure load time, prompt and generation speed, and peak memory.
    ///
    /// Runs the model on random prompt tokens through the same generation
    /// loop as `ask`, like llama.cpp's llama-bench.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Resume a conversation saved with /save.
    #[arg(long, value_name = "FILE")]
    pub load: Option<PathBuf>,

    /// Keep no input history on disk.
    #[arg(long)]
    pub no_history: bool,

    #[command(flatten)]
    pub turn: TurnArgs,

    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// What shapes a reply: the settings `ask`, `chat` and `config` share.
#[derive(Args, Debug)]
pub struct TurnArgs {
    #[command(flatten)]
    pub system: SystemArgs,

    #[command(flatten)]
    pub persona: PersonaArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    #[command(flatten)]
    pub format: FormatArgs,

    /// Neither read nor write the prompt cache: the keys and values of
    /// system prompts and saved conversations, kept on disk so that they
    /// are not computed again (`greve cache` shows it).
    #[arg(long)]
    pub no_prompt_cache: bool,
}

/// Replies that are valid JSON by construction.
#[derive(Args, Debug)]
pub struct FormatArgs {
    /// `json`: the reply is one JSON object, and nothing else (constrained
    /// decoding); `text` (the default): free text.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<FormatArg>,

    /// The reply is a JSON value this schema allows: a file, or the schema
    /// itself (`{...}`). docs/json.md lists the keywords supported.
    #[arg(long, value_name = "SCHEMA", conflicts_with = "format")]
    pub json_schema: Option<String>,

    /// The reply is text this grammar derives: a file in llguidance's Lark
    /// dialect (`start: "oui" | "non"`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["format", "json_schema"])]
    pub grammar: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// `path`: print where the config file is.
    #[arg(value_parser = ["path"])]
    pub action: Option<String>,

    #[command(flatten)]
    pub turn: TurnArgs,

    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[arg(value_enum)]
    pub action: Option<CacheAction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheAction {
    /// Remove every entry.
    Clear,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// A preset or a Hub repo id (default: mistral-7b-instruct-v0.3).
    #[arg(value_name = "MODEL")]
    pub model: Option<String>,

    #[command(flatten)]
    pub hub: HubArgs,
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// The text; read from stdin, byte for byte, when absent or `-`. With
    /// --decode, the token ids.
    #[arg(value_name = "TEXT")]
    pub text: Vec<String>,

    /// Where the tokenizer comes from: a model folder, a tokenizer.json, a
    /// .gguf file (only its metadata is read), a Hub repo or a preset.
    #[arg(short, long, env = "GREVE_MODEL", value_name = "MODEL")]
    pub model: Option<String>,

    #[command(flatten)]
    pub hub: HubArgs,

    /// Leave out the BOS token the model's tokenizer would add.
    #[arg(long)]
    pub no_bos: bool,

    /// Parse control tokens written out (`</s>`, `[INST]`) as those tokens,
    /// not as plain text.
    #[arg(long)]
    pub special: bool,

    /// Print `id<TAB>piece` per line.
    #[arg(long, conflicts_with = "json")]
    pub pieces: bool,

    /// Print one JSON object with `ids` and `pieces`.
    #[arg(long)]
    pub json: bool,

    /// Turn token ids back into text.
    #[arg(long, conflicts_with_all = ["chat", "pieces", "json", "special", "no_bos"])]
    pub decode: bool,

    /// Render a conversation (a /save transcript, or a JSON list of
    /// {role, content} messages) with the model's instruct format.
    #[arg(long, value_name = "FILE", conflicts_with = "special")]
    pub chat: Option<PathBuf>,

    /// With --chat, print the rendered prompt text before the ids.
    #[arg(long = "text", requires = "chat")]
    pub text_out: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub format: FormatArgs,

    /// Prompt length, prefilled in one go (pp).
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub prompt_tokens: usize,

    /// Tokens generated after the prompt (tg).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub gen_tokens: usize,

    /// Timed runs after one short warm-up; the table shows mean ± sd.
    #[arg(long, short = 'r', value_name = "R", default_value_t = 3)]
    pub repetitions: usize,

    /// Also measure with N tokens already in the context (as llama-bench's
    /// -d): each repetition runs the plain measurement and then the same one
    /// after N more tokens, back to back, so that their ratio is not
    /// blurred by the machine's speed drifting between runs.
    #[arg(long, short = 'd', value_name = "N", default_value_t = 0)]
    pub depth: usize,

    /// Also run another engine on the same file and tokens, alternating
    /// with greve run by run, and print greve's speed over its: `candle`,
    /// candle-transformers' stock Mistral (safetensors) and quantised
    /// llama (GGUF) pipelines. Both models are in memory at once.
    #[arg(long, value_enum, value_name = "ENGINE")]
    pub baseline: Option<BaselineArg>,

    /// One more run after the others, whose decode is timed part by part:
    /// the Q4_K and Q6_K products, the other products, attention, and the
    /// rest (norms, rope, sampling, threads waiting between products); with
    /// --depth, one more at that depth. CPU only: a GPU's work is timed when
    /// queued, not when done.
    #[arg(long)]
    pub breakdown: bool,

    /// Also run N streams at once, each its own prompt, decoded together
    /// as `greve serve` runs concurrent requests, and compare their
    /// tokens a second, in all, with one stream's (as llama.cpp's
    /// llama-batched-bench): alternated run by run.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,

    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BaselineArg {
    Candle,
}

#[derive(Args, Debug)]
pub struct AskArgs {
    /// The prompt; read from stdin when absent or `-`.
    #[arg(value_name = "PROMPT")]
    pub prompt: Vec<String>,

    #[command(flatten)]
    pub turn: TurnArgs,

    #[command(flatten)]
    pub remote: RemoteArgs,

    /// After the reply, print token counts, time to first token and tokens/s to stderr.
    #[arg(long)]
    pub stats: bool,

    /// Print one JSON object (reply, finish reason, token counts, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,

    /// Print the rendered prompt and its token ids to stderr before generating.
    #[arg(long)]
    pub verbose_prompt: bool,

    /// For a model that thinks before it answers (Magistral, Ministral 3
    /// Reasoning): `show` writes its thinking to stderr as it goes, `hide`
    /// (the default) and `on` only count it there, `off` does not ask the
    /// model to think (its reasoning system prompt is left out). stdout has
    /// the answer alone either way.
    #[arg(long, value_enum, value_name = "MODE", default_value = "hide")]
    pub think: crate::commands::reply::Think,

    /// Answer after a saved conversation (a /save transcript): its system
    /// prompt and persona apply unless flags say otherwise.
    #[arg(long, value_name = "FILE")]
    pub load: Option<PathBuf>,

    /// Write the conversation, this exchange included, to FILE (atomically).
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,

    #[command(flatten)]
    pub tools: ToolArgs,
}

/// Function calling (docs/tools.md).
#[derive(Args, Debug)]
pub struct ToolArgs {
    /// Functions the model may call: a JSON file holding OpenAI's `tools`
    /// list. A reply that calls them prints each call as a line of JSON
    /// (`id`, `name`, `arguments`) instead of text.
    #[arg(long, value_name = "FILE", conflicts_with = "grammar")]
    pub tools: Option<PathBuf>,

    /// `auto` (the default): text or calls, as the model decides;
    /// `required`: one call or more; `none`: text only; or a function's
    /// name: one call to it.
    #[arg(long, value_name = "CHOICE", requires = "tools")]
    pub tool_choice: Option<String>,

    /// At most one call per reply.
    #[arg(long, requires = "tools")]
    pub no_parallel_tool_calls: bool,

    /// The result of the loaded conversation's last call, instead of a
    /// prompt: the model answers with it. Repeat it for a reply that made
    /// several calls, in their order.
    #[arg(
        long,
        value_name = "TEXT",
        requires = "load",
        conflicts_with = "prompt"
    )]
    pub tool_result: Vec<String>,
}

/// Where the model runs, when not here.
#[derive(Args, Debug)]
pub struct RemoteArgs {
    /// An OpenAI-compatible server (vLLM, TGI, llama-server, ollama, `greve
    /// serve`) answers instead of a model loaded here: http://HOST:PORT/v1.
    /// `--model` then names the server's model (default: its first); the
    /// key comes from GREVE_API_KEY or OPENAI_API_KEY.
    #[arg(long, env = "GREVE_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The address to listen on: 127.0.0.1 (this machine only) or another
    /// interface's, 0.0.0.0 for all (then set an API key).
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDRESS")]
    pub host: String,

    /// The port; 0 lets the system pick a free one (printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Requests must send `Authorization: Bearer KEY`.
    #[arg(
        long,
        env = "GREVE_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,

    /// Let web pages from ORIGIN (`*`: any) call the server (CORS).
    #[arg(long, value_name = "ORIGIN")]
    pub cors: Option<String>,

    /// How many requests the model answers together, one forward pass a
    /// step over all of them, each conversation keeping its KV cache: a
    /// request takes the one holding the longest prefix of its prompt (else
    /// the least recently used), so clients that alternate each keep
    /// theirs. 1: one request at a time, one cache for all.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,

    /// How many requests may wait for the model; more are refused with 503.
    #[arg(long, default_value_t = 16, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub queue: u16,

    /// Seconds a client has to send a request's headers, and again its
    /// body; a slower one is dropped.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..), value_name = "SECONDS")]
    pub timeout: u16,

    #[command(flatten)]
    pub turn: TurnArgs,
}

#[derive(Args, Debug)]
pub struct SystemArgs {
    /// A system prompt, put where the model's instruct format expects it.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    /// Read the system prompt from a file (write your own persona).
    #[arg(long, value_name = "FILE", conflicts_with = "system")]
    pub system_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PersonaArgs {
    /// Go on strike: râleuse (grumbles but answers; the default), totale
    /// (every request gets a strike notice, no model needed) or perlée
    /// (some requests get the notice). Write it --strike=MODE.
    #[arg(
        long,
        value_name = "MODE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "râleuse",
        env = "GREVE_STRIKE",
        value_parser = parse_mode
    )]
    pub strike: Option<Mode>,

    /// Back to work: no persona, whatever GREVE_STRIKE says.
    #[arg(long)]
    pub no_strike: bool,

    /// Add a guardrail system prompt (prompts/safe-system.txt).
    #[arg(long)]
    pub safe: bool,

    /// A folder of prompt files that replace the built-in ones file by file
    /// (see prompts/README.md).
    #[arg(long, value_name = "DIR", env = "GREVE_PROMPTS")]
    pub prompts: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

#[derive(Args, Debug)]
pub struct HubArgs {
    /// For presets and GGUF repos: the quantisation (Q4_K_M, Q5_K_M, Q8_0,
    /// …) or `safetensors` for the original weights.
    #[arg(long, value_name = "QUANT", env = "GREVE_QUANT")]
    pub quant: Option<String>,

    /// A branch, tag or commit of the Hub repo (also `org/name@rev`).
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,

    /// Use only what is in the Hub cache; make no request (also HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// The model: a preset (`greve models`), a Hub repo id (org/name), a
    /// folder laid out like a Hugging Face repo or a .gguf file. Default:
    /// mistral-7b-instruct-v0.3.
    #[arg(short, long, env = "GREVE_MODEL", value_name = "MODEL")]
    pub model: Option<String>,

    #[command(flatten)]
    pub hub: HubArgs,

    /// Where to run: auto (the default), cpu, cuda, cuda:N or metal.
    #[arg(long, env = "GREVE_DEVICE", value_name = "DEVICE")]
    pub device: Option<crate::settings::DeviceSpec>,

    /// Compute dtype for safetensors weights (GGUF always computes in f32).
    /// Default: bf16 on GPU; on CPU f32 when it fits in memory, else bf16.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,

    /// CPU threads (default: all cores).
    #[arg(long, value_name = "N", env = "GREVE_THREADS", value_parser = threads)]
    pub threads: Option<u16>,

    /// How the CPU keeps past keys and values: f16 (the default), or q8,
    /// half the memory and faster long conversations at a small cost in
    /// precision.
    #[arg(long, value_enum, env = "GREVE_KV_CACHE", value_name = "TYPE")]
    pub kv_cache: Option<KvCacheArg>,

    /// The most tokens a conversation may hold, prompt and reply (default:
    /// the model's context, 32k to 256k); the KV cache grows to it as the
    /// conversation does, and a turn that would not fit in memory is refused.
    #[arg(long, short = 'c', value_name = "N", env = "GREVE_CTX_SIZE", value_parser = ctx_size)]
    pub ctx_size: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Json,
    Text,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvCacheArg {
    F16,
    Q8,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy (always the most likely token).
    #[arg(long, value_name = "T", env = "GREVE_TEMPERATURE", value_parser = non_negative, allow_negative_numbers = true)]
    pub temperature: Option<f32>,

    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long, value_name = "P", env = "GREVE_TOP_P", value_parser = probability, allow_negative_numbers = true)]
    pub top_p: Option<f32>,

    /// Keep only the K most likely tokens (0: all).
    #[arg(long, value_name = "K", env = "GREVE_TOP_K")]
    pub top_k: Option<usize>,

    /// Penalise tokens seen recently (1: off; 1.1 is a mild penalty).
    #[arg(long, value_name = "X", env = "GREVE_REPEAT_PENALTY", value_parser = positive, allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,

    /// How many recent tokens the repeat penalty looks at (default 64).
    #[arg(long, value_name = "N", env = "GREVE_REPEAT_LAST_N")]
    pub repeat_last_n: Option<usize>,

    /// Seed for sampling, for reproducible replies (default: random).
    #[arg(long, value_name = "N", env = "GREVE_SEED")]
    pub seed: Option<u64>,

    /// Most tokens to generate; 0: no limit (default: the model's generation_config.json, else until the model stops or the context is full).
    #[arg(long, short = 'n', value_name = "N", env = "GREVE_MAX_TOKENS")]
    pub max_tokens: Option<usize>,
}

fn number(s: &str) -> Result<f32, String> {
    let x: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err(format!("{s} is not a finite number"))
    }
}

fn non_negative(s: &str) -> Result<f32, String> {
    number(s).and_then(check::non_negative)
}

fn positive(s: &str) -> Result<f32, String> {
    number(s).and_then(check::positive)
}

fn probability(s: &str) -> Result<f32, String> {
    number(s).and_then(check::probability)
}

fn ctx_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 16 => Ok(n),
        Ok(n) => Err(format!(
            "{n} tokens leave no room for a conversation; give 16 or more"
        )),
        Err(_) => Err(format!("{s} is not a whole number")),
    }
}

fn threads(s: &str) -> Result<u16, String> {
    s.parse::<u64>()
        .map_err(|_| format!("{s} is not a whole number"))
        .and_then(check::threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_values_are_checked() {
        assert!(
            Cli::try_parse_from(["greve", "ask", "-m", "x", "--temperature", "-1", "hi"]).is_err()
        );
        assert!(Cli::try_parse_from(["greve", "ask", "-m", "x", "--top-p", "1.5", "hi"]).is_err());
        assert!(Cli::try_parse_from(["greve", "ask", "-m", "x", "--top-p", "nan", "hi"]).is_err());
        assert!(
            Cli::try_parse_from(["greve", "ask", "-m", "x", "--repeat-penalty", "0", "hi"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["greve", "ask", "-m", "x", "--threads", "0", "hi"]).is_err());
        let ok = Cli::try_parse_from(["greve", "ask", "-m", "x", "--temperature", "0", "a", "b"])
            .unwrap();
        let Some(Command::Ask(args)) = ok.command else {
            panic!("not ask")
        };
        assert_eq!(args.prompt, ["a", "b"]);
        assert_eq!(args.turn.sampling.temperature, Some(0.0));
    }

    fn strike(args: &[&str]) -> Option<Mode> {
        let cli = Cli::try_parse_from(args).unwrap();
        let Some(Command::Ask(args)) = cli.command else {
            panic!("not ask")
        };
        args.turn.persona.strike
    }

    #[test]
    fn strike_takes_an_optional_mode_after_an_equals_sign() {
        assert_eq!(strike(&["greve", "ask", "hi"]), None);
        assert_eq!(
            strike(&["greve", "ask", "--strike", "hi"]),
            Some(Mode::Raleuse)
        );
        assert_eq!(
            strike(&["greve", "ask", "--strike=totale", "hi"]),
            Some(Mode::Totale)
        );
        assert_eq!(
            strike(&["greve", "ask", "--strike=perlee", "hi"]),
            Some(Mode::Perlee)
        );
        assert!(Cli::try_parse_from(["greve", "ask", "--strike=lundi", "hi"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
    }
}
