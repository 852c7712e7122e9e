//! The world's own random stream: SplitMix64 with the world's salt, so that a seed names the
//! same images forever, whatever happens to the streams other modules draw.

use crate::rng::SplitMix64;

/// The world's salt (the first 64 bits of SHA-512's initial value).
pub const WORLD_SALT: u64 = 0x6a09_e667_f3bc_c908;

/// The generator of the world: [`SplitMix64`] with the world's salt.
#[derive(Debug, Clone)]
pub struct WorldRng(SplitMix64);

impl WorldRng {
    pub fn new(seed: u64) -> Self {
        WorldRng(SplitMix64::salted(seed, WORLD_SALT))
    }

    /// A generator for item `index` of stream `seed` (items can be drawn in any order).
    pub fn for_item(seed: u64, index: u64) -> Self {
        WorldRng(SplitMix64::for_item(seed, WORLD_SALT, index))
    }
}

impl std::ops::Deref for WorldRng {
    type Target = SplitMix64;
    fn deref(&self) -> &SplitMix64 {
        &self.0
    }
}

impl std::ops::DerefMut for WorldRng {
    fn deref_mut(&mut self) -> &mut SplitMix64 {
        &mut self.0
    }
}
