//! greve: chat with Mistral 7B on your own machine.
//!
//! The binary (`main.rs`) parses the command line and hands over to a front
//! end (`ask`); the engine below it is a library so that tests load models
//! through exactly the code that loads real weights.

pub mod ask;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod config;
pub mod docs;
pub mod doctor;
pub mod exit;
pub mod generate;
pub mod hub;
pub mod messages;
pub mod model;
pub mod models;
pub mod persona;
pub mod repl;
pub mod resolve;
pub mod sampler;
pub mod settings;
pub mod system;
pub mod template;
pub mod tokenize;
pub mod tokenizer;
pub mod transcript;
