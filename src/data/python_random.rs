//! CPython's `random.Random`, bit for bit, for the few calls CoOp's few-shot sampling makes:
//! `seed(int)`, `getrandbits`, `_randbelow`, `sample`, `shuffle` and `random`.
//!
//! The generator is the 32-bit Mersenne Twister MT19937 (`Modules/_randommodule.c`), seeded the
//! way CPython seeds it from an `int`: the absolute value is cut into 32-bit words, least
//! significant first, and fed to `init_by_array`. The sequence methods follow `Lib/random.py`
//! (CPython 3.6 to 3.13 give the same draws for these calls). Checked against CPython in
//! `tests/few_shot.rs`, which reproduces CoOp's published few-shot sets.

/// State size of MT19937, in 32-bit words.
const N: usize = 624;
/// The middle word offset of the recurrence.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// CPython's `random.Random`.
#[derive(Clone)]
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl std::fmt::Debug for PyRandom {
    // 624 words would drown any assertion message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PyRandom(index {})", self.index)
    }
}

impl PyRandom {
    /// `random.Random(seed)` / `random.seed(seed)` for an `int` seed. CPython uses `abs(seed)`,
    /// so `-5` and `5` give the same stream, as here.
    pub fn new(seed: i64) -> Self {
        Self::from_u64(seed.unsigned_abs())
    }

    /// `random.seed(seed)` for a non-negative `int` up to `2**64 - 1`.
    pub fn from_u64(seed: u64) -> Self {
        // _randommodule.c random_seed: the key is the int's 32-bit words, least significant
        // first, as few as hold its bits, and at least one (seed 0 is the key [0]).
        let low = seed as u32;
        let high = (seed >> 32) as u32;
        let key: &[u32] = if high == 0 { &[low] } else { &[low, high] };
        let mut rng = PyRandom {
            mt: [0; N],
            index: N,
        };
        rng.init_by_array(key);
        rng
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1];
            self.mt[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn init_by_array(&mut self, key: &[u32]) {
        self.init_genrand(19_650_218);
        let mt = &mut self.mt;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1];
            mt[i] = (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1];
            mt[i] =
                (mt[i] ^ (prev ^ (prev >> 30)).wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        // The most significant bit is 1: the state is never all zeros.
        mt[0] = 0x8000_0000;
    }

    /// The next 32-bit output (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn twist(&mut self) {
        let mag = |y: u32| if y & 1 == 0 { 0 } else { MATRIX_A };
        for kk in 0..N {
            let y = (self.mt[kk] & UPPER_MASK) | (self.mt[(kk + 1) % N] & LOWER_MASK);
            self.mt[kk] = self.mt[(kk + M) % N] ^ (y >> 1) ^ mag(y);
        }
        self.index = 0;
    }

    /// `random.getrandbits(k)` for `k <= 64`. CPython fills 32-bit words least significant
    /// first and drops the surplus low bits of the last (most significant) word.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits: k = {k} > 64 is not needed here");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return u64::from(self.next_u32() >> (32 - k));
        }
        let low = u64::from(self.next_u32());
        let high = u64::from(self.next_u32() >> (64 - k));
        (high << 32) | low
    }

    /// `random._randbelow(n)` (`_randbelow_with_getrandbits`): a uniform int in `0..n` by
    /// rejection from `n.bit_length()` random bits. `n` must be at least 1.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0, "randbelow(0)");
        let k = 64 - n.leading_zeros();
        let mut r = self.getrandbits(k);
        while r >= n {
            r = self.getrandbits(k);
        }
        r
    }

    /// `random.random()`: 53 random bits as a float in `[0, 1)`.
    pub fn random(&mut self) -> f64 {
        let a = u64::from(self.next_u32() >> 5);
        let b = u64::from(self.next_u32() >> 6);
        (a as f64 * 67_108_864.0 + b as f64) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `random.shuffle(x)` (Fisher-Yates from the end, CPython 3.11's form; identical draws to
    /// earlier versions without a custom `random` argument).
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }

    /// `random.sample(range(n), k)`: `k` distinct positions in `0..n`, in draw order, or `None`
    /// when `k > n` (CPython raises `ValueError`).
    ///
    /// CPython picks one of two algorithms by comparing `n` with the size of a set of `k` items,
    /// and they consume the generator differently, so the choice is ported exactly.
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Option<Vec<usize>> {
        if k > n {
            return None;
        }
        // random.py: setsize = 21; if k > 5: setsize += 4 ** _ceil(_log(k * 3, 4))
        // math.log(x, 4) is log(x) / log(4) in double precision, as here.
        let mut setsize = 21usize;
        if k > 5 {
            let exponent = ((k as f64 * 3.0).ln() / 4f64.ln()).ceil() as u32;
            setsize = setsize.saturating_add(4usize.saturating_pow(exponent));
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            // Pool: draw from the shrinking pool, moving the last unselected item into the hole.
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow((n - i) as u64) as usize;
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            // Set: draw positions from the whole range, redrawing repeats.
            let mut selected = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n as u64) as usize;
                while selected.contains(&j) {
                    j = self.randbelow(n as u64) as usize;
                }
                selected.insert(j);
                result.push(j);
            }
        }
        Some(result)
    }

    /// `random.sample(population, k)`: clones of `k` distinct items, in draw order.
    pub fn sample<T: Clone>(&mut self, population: &[T], k: usize) -> Option<Vec<T>> {
        let idx = self.sample_indices(population.len(), k)?;
        Some(idx.into_iter().map(|i| population[i].clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.12:
    //   import random; r = random.Random(S); ...
    #[test]
    fn first_outputs_match_cpython() {
        let mut r = PyRandom::new(1);
        assert_eq!(r.getrandbits(32), 577_090_037);
        let mut r = PyRandom::new(0);
        assert_eq!(r.getrandbits(32), 3_626_764_237);
    }

    #[test]
    fn wide_seeds_bits_and_floats_match_cpython() {
        // r = random.Random(2**40 + 7); [r.getrandbits(32) for _ in range(2)], r.getrandbits(40), r.random()
        let mut r = PyRandom::from_u64((1 << 40) + 7);
        assert_eq!(
            [r.getrandbits(32), r.getrandbits(32)],
            [2_635_837_658, 3_209_733_218]
        );
        assert_eq!(r.getrandbits(40), 1_034_292_189_877);
        assert_eq!(r.random(), 0.9450115087592873);
    }

    #[test]
    fn sample_and_shuffle_match_cpython() {
        // r = random.Random(-3); r.sample(range(100), 10), r.sample(range(10), 4); r.shuffle(x)
        let mut r = PyRandom::new(-3);
        assert_eq!(
            r.sample_indices(100, 10).unwrap(),
            [30, 75, 69, 16, 47, 77, 60, 80, 74, 8]
        );
        assert_eq!(r.sample_indices(10, 4).unwrap(), [9, 0, 7, 2]);
        let mut x: Vec<u32> = (0..10).collect();
        r.shuffle(&mut x);
        assert_eq!(x, [2, 0, 1, 6, 4, 7, 5, 9, 3, 8]);
        // r = random.Random(42); r.sample(range(3000), 20), [r._randbelow(7) for _ in range(5)]
        let mut r = PyRandom::new(42);
        let want = [
            2619, 456, 102, 1126, 1003, 914, 571, 419, 2771, 2233, 356, 2418, 1728, 130, 122, 383,
            895, 952, 2069, 2465,
        ];
        assert_eq!(r.sample_indices(3000, 20).unwrap(), want);
        let below: Vec<u64> = (0..5).map(|_| r.randbelow(7)).collect();
        assert_eq!(below, [0, 4, 1, 5, 5]);
        assert_eq!(r.sample_indices(3, 4), None);
    }
}
