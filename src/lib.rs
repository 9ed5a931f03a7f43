//! greve: chat with Mistral 7B on your own machine.
//!
//! The binary (`main.rs`) parses the command line (`cli.rs`), resolves the
//! settings once (`settings.rs`, with `config_file.rs`) and hands over to a
//! command in `commands/`. `ask` and `chat` talk through a `conversation`;
//! below it the engine (`generate`, `sampler`, `template`, `tokenizer`,
//! `model/`) is a library, so that tests load models through exactly the
//! code that loads real weights.

pub mod batch;
pub mod cli;
pub mod commands;
pub mod config_file;
pub mod conversation;
pub mod exit;
pub mod generate;
pub mod hub;
pub mod interrupt;
pub mod messages;
pub mod model;
pub mod persona;
pub mod prompt_cache;
pub mod remote;
pub mod reply;
pub mod resolve;
pub mod sampler;
pub mod server;
pub mod settings;
pub mod structured;
pub mod system;
pub mod template;
pub mod text_file;
pub mod tokenizer;
pub mod tools;
pub mod transcript;
pub mod turn;
