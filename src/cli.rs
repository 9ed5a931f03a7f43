//! The command line, as clap types and nothing else: each doc comment is the
//! `--help` text. Values are checked here only for their form; what they
//! mean is worked out in `settings.rs`.

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "greve",
    version,
    about = "Chat with Mistral 7B on your own machine.",
    after_help = "Exit codes: 0 success, 1 other error, 2 usage, 3 model not found, \
                  4 model invalid, 5 generation failed, 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Answer one prompt and exit: the reply alone on stdout.
    ///
    /// The prompt comes from the arguments, or from stdin when there is none
    /// or it is `-`.
    Ask(AskArgs),
}

#[derive(Args, Debug)]
pub struct AskArgs {
    /// The prompt; read from stdin when absent or `-`.
    #[arg(value_name = "PROMPT")]
    pub prompt: Vec<String>,

    /// A system prompt, put where the model's instruct format expects it.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub sampling: SamplingArgs,

    /// After the reply, print token counts, time to first token and tokens/s to stderr.
    #[arg(long)]
    pub stats: bool,

    /// Print one JSON object (reply, finish reason, token counts, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,

    /// Print the rendered prompt and its token ids to stderr before generating.
    #[arg(long)]
    pub verbose_prompt: bool,
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// The model: a folder laid out like a Hugging Face repo (config.json,
    /// tokenizer.json, *.safetensors) or a .gguf file.
    #[arg(short, long, env = "GREVE_MODEL", value_name = "PATH")]
    pub model: String,

    /// Where to run: auto, cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "auto", value_name = "DEVICE")]
    pub device: String,

    /// Compute dtype for safetensors weights (GGUF always computes in f32).
    /// Default: f32 on CPU, bf16 on GPU.
    #[arg(long, value_enum)]
    pub dtype: Option<DtypeArg>,

    /// CPU threads (default: all cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
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
    #[arg(long, value_name = "T", value_parser = non_negative)]
    pub temperature: Option<f32>,

    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long, value_name = "P", value_parser = probability)]
    pub top_p: Option<f32>,

    /// Keep only the K most likely tokens (0: all).
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,

    /// Penalise tokens seen recently (1: off; 1.1 is a mild penalty).
    #[arg(long, value_name = "X", value_parser = positive)]
    pub repeat_penalty: Option<f32>,

    /// How many recent tokens the repeat penalty looks at.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub repeat_last_n: usize,

    /// Seed for sampling, for reproducible replies (default: random).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Most tokens to generate (default: until the model stops or the context is full).
    #[arg(long, short = 'n', value_name = "N")]
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
    number(s).and_then(|x| {
        if x >= 0.0 {
            Ok(x)
        } else {
            Err("must be 0 or more".into())
        }
    })
}

fn positive(s: &str) -> Result<f32, String> {
    number(s).and_then(|x| {
        if x > 0.0 {
            Ok(x)
        } else {
            Err("must be more than 0".into())
        }
    })
}

fn probability(s: &str) -> Result<f32, String> {
    number(s).and_then(|x| {
        if x > 0.0 && x <= 1.0 {
            Ok(x)
        } else {
            Err("must be in (0, 1]".into())
        }
    })
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
        let Command::Ask(args) = ok.command;
        assert_eq!(args.prompt, ["a", "b"]);
        assert_eq!(args.sampling.temperature, Some(0.0));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
