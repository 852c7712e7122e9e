//! From images on disk to cached CLIP features, the input of every method.
//!
//! ```text
//! fingerprint.rs  a model's identity: a hash of its config, weight and tokenizer files
//! cache.rs        the safetensors feature files: key, metadata, atomic writes, resume chunks
//! extract.rs      which sets a run needs; batched encoding with decoding in a second thread
//! import.rs       features another program computed (numpy, safetensors, PyTorch), checked
//!                 and written as `extract` writes its own
//! job.rs          what `extract` orchestrates: prompts, projection, every set, as one call
//! text.rs         class-name prompt embeddings (the zero-shot classifier) in the cache
//! projection.rs   the image tower's last projection, beside pre-projection features
//! task.rs         a few-shot task (FewShotTask) read back from the cache: one extraction's sets
//! merge.rs        joining the shards that sharded processes (`i/n`) wrote
//! lock.rs         one writer per file (advisory locks) and clean-up after killed writers
//! fault.rs        test-only fault injection (`CLIP_ADAPTER_FAULT`), inert unless set, absent
//!                 from release builds
//! ```
//!
//! The design, the file format and the Slurm / Kubernetes recipe are in
//! `docs/data-pipeline.md`.

pub mod cache;
mod error;
pub mod extract;
pub mod import;
pub mod job;
pub mod lock;
pub mod merge;
pub mod projection;
pub mod task;
pub mod text;

pub use crate::clip::fingerprint::{checksum, hash_file, model_fingerprint, ContentHash};
pub use cache::{DataSource, FeatureFile, Output, SetKey, Transform};
pub use error::{FeatureError, Result};
pub use extract::{plan, with_pre_projection, Event, ExtractOptions, FeatureSet, Shard};
