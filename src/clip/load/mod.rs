//! Reading a checkpoint from disk: its config (`transformers`' `config.json` or open_clip's
//! `open_clip_config.json`), the key map between the two layouts, and the tensors themselves.

pub mod checkpoint;
pub mod config;
pub mod layout;
pub mod open_clip_config;
pub mod write;
