//! The integration tests, one file a subject, built as one binary: one link
//! for all of them, and one process whose threads share the machine.

mod common;

mod chat;
mod cli;
mod config;
mod docs;
mod engine;
mod fuzz;
mod hostile;
mod hub;
mod persona;
mod portable;
mod prompt_cache;
mod reasoning;
mod remote;
mod server;
mod structured;
mod terminal;
mod tokenize;
mod tokenizer;
mod tools;
