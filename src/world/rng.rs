//! The world's own random numbers: SplitMix64, so that a seed names the same images forever,
//! whatever happens to the generators other modules use.

/// A small, fast, seedable generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct WorldRng(crate::splitmix::SplitMix64);

impl WorldRng {
    pub fn new(seed: u64) -> Self {
        WorldRng(crate::splitmix::SplitMix64::from_state(
            seed ^ 0x6a09_e667_f3bc_c908,
        ))
    }

    /// A generator for item `index` of stream `seed`: items can be drawn in any order, or in
    /// parallel, and still be the same.
    pub fn for_item(seed: u64, index: u64) -> Self {
        let mut r = WorldRng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index);
        r.next_u64();
        r
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f32 {
        self.0.uniform()
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn chance(&mut self, p: f32) -> bool {
        self.uniform() < p
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}
