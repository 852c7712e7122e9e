//! The single integration-test binary (one link step for all tests).

mod common;
mod checkpoint_errors;
mod cli;
mod parity_clip;
mod parity_open_clip;
mod preprocess;
mod tokenizer;
mod few_shot;
mod features;
mod cli_data;
mod datasets;
mod methods;
mod pretrain;
mod world;
mod demo;
