//! The single integration-test binary (one link step for all tests).

mod cache_safety;
mod checkpoint_errors;
mod cli;
mod cli_data;
mod common;
mod coop;
mod datasets;
mod demo;
mod experiment;
mod features;
mod few_shot;
mod fuzz_regressions;
mod input_limits;
mod methods;
mod new_methods;
mod parity_clip;
mod parity_open_clip;
mod preprocess;
mod preprocess_jpeg_simd;
mod pretrain;
mod report;
mod sweep;
mod tokenizer;
mod torchscript;
mod world;
