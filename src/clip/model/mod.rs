//! The inference towers, built from a loaded checkpoint: the shared pre-norm transformer, the
//! ViT, ModifiedResNet, SigLIP and EVA02 image towers, the text tower.

pub mod conv;
pub mod eva;
pub mod positions;
pub mod resnet;
pub mod siglip;
pub mod text;
pub mod transformer;
pub mod vit;
