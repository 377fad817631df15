//! CLI subcommands. Each `run` returns the process exit code on success (0, or non-zero for a
//! reported failure such as a parity or smoke-test failure) and a typed error otherwise.
pub mod bench;
pub mod bench_batch;
pub mod bench_state;
pub mod cache_prompt;
pub mod chat;
pub mod common;
pub mod generate;
pub mod info;
pub mod logits;
pub mod parity;
pub mod serve;
pub mod smoke;
pub mod synth;
