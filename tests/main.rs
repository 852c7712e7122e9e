//! The single integration-test binary (one link step for all tests).

mod checkpoint_errors;
mod cli;
mod cli_data;
mod common;
mod coop;
mod datasets;
mod demo;
mod features;
mod few_shot;
mod methods;
mod parity_clip;
mod parity_open_clip;
mod preprocess;
mod pretrain;
mod tokenizer;
mod world;
