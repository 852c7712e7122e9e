//! clip-adapter: few-shot adaptation of CLIP vision-language models.
//!
//! The pipeline, in the order a user meets it:
//! 1. [`clip::hub::resolve`] finds a checkpoint (a directory or a hub id in the Hugging Face cache);
//! 2. [`clip::Clip::load`] reads it, accounting for every tensor;
//! 3. [`tokenizer::Tokenizer`] turns prompts into CLIP's BPE ids, exactly as the references do;
//! 4. [`image::Preprocess`] decodes and resizes images exactly as PIL + torchvision do;
//! 5. [`clip::Clip::encode_image`] / [`clip::Clip::encode_text`] give the embeddings;
//! 6. [`zero_shot::ZeroShotClassifier`] turns class names and templates into a classifier.

pub mod clip;
pub mod data;
pub mod demo;
pub mod encode;
pub mod experiment;
pub mod fault;
pub mod features;
pub mod figure;
pub mod fsutil;
pub mod hash;
pub mod hint;
pub mod image;
pub mod kernels;
pub mod limits;
pub mod methods;
pub mod pretrain;
pub mod report;
pub mod rng;
pub mod runner;
pub mod safetensors_file;
pub mod tokenizer;
pub mod tsne;
pub mod unknown_name;
pub mod world;
pub mod zero_shot;

pub use clip::error::{Error, Result};
pub use clip::Clip;
