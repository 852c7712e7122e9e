//! Reading a checkpoint from disk: its config (`transformers`' `config.json`, open_clip's
//! `open_clip_config.json`, or inferred from the shapes of an OpenAI checkpoint), the key map
//! between the layouts, and the tensors themselves (safetensors, or PyTorch's zip archives read
//! by our own pickle reader).

pub mod checkpoint;
pub mod config;
pub mod layout;
pub mod open_clip_config;
pub mod pickle;
pub mod siglip_config;
pub mod state_dict;
pub mod timm_config;
pub mod torch_archive;
pub mod torch_pickle;
pub mod write;
