//! One file per `greve` command (`models.rs` holds `models`, `pull` and
//! `info`; completions and the man page come from the clap definitions, in
//! `cli/docs.rs`); `reply.rs` is what `ask` and `chat` share.

pub mod ask;
pub mod bench;
pub mod cache;
pub mod chat;
pub mod config;
pub mod doctor;
pub mod models;
pub mod reply;
pub mod tokenize;
