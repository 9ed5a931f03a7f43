//! One file per `greve` command (`models.rs` holds `models`, `pull` and
//! `info`; `docs.rs` the completions and the man page); `reply.rs` is what
//! `ask` and `chat` share.

pub mod ask;
pub mod bench;
pub mod chat;
pub mod config;
pub mod docs;
pub mod doctor;
pub mod models;
pub mod reply;
pub mod tokenize;
