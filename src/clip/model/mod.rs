//! The inference towers, built from a loaded checkpoint: the shared pre-norm transformer, the
//! ViT and ModifiedResNet image towers, the text tower.

pub mod conv;
pub mod resnet;
pub mod siglip;
pub mod text;
pub mod transformer;
pub mod vit;
