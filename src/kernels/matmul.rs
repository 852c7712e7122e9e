//! The one wrapper around the `gemm` crate: row-major f32 products with optional transposes, used
//! by the ResNet convolutions and by the heads trained on cached features (candle's own matmul
//! calls the same crate for the transformer towers), and our few-row kernels, which take over the
//! products the blocked GEMM pads to its tiles.
//!
//! Two register-tiled kernels, each with an AVX-512 path (16-float vectors, 32 registers), an
//! AVX2 + FMA path and a portable one, chosen once at run time ([`simd_level`]):
//!
//! - dot tiles, for `x · wᵀ` with few rows of `x`: every output is a dot product of two
//!   contiguous rows (a linear layer's input against PyTorch's `out × in` weight);
//! - broadcast tiles, for `a · b` with `b` row-major and either few rows of `op(a)` or a short
//!   inner dimension (a head's `dY · W`, and the weight gradients `dYᵀ · X`): each step broadcasts
//!   one element of `a` per row against a row segment of `b`, so `a` may have any strides.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Up to this many rows (one ViT-B/32 image's 50 tokens, one 77-token prompt, a batch of
/// features) the few-row kernels are faster than the blocked GEMM, whose AVX-512 tiles are 48 or
/// 64 rows tall. Measured on AMD Zen 5 with AVX-512 and on AMD Zen 4 with AVX2 + FMA and the
/// portable level forced (`cargo bench --bench products`, docs/benchmarks.md); no CPU of ours
/// runs the portable level natively.
pub const FEW_ROWS: usize = 80;

/// Up to this many rows, `x · wᵀ` runs through the AVX-512 dot tiles in blocks of [`FEW_ROWS`]
/// (a training batch of 256 features against 1000 classes: 400 GFLOP/s against the blocked
/// GEMM's 210 on Zen 5); beyond, the blocked GEMM's reuse of each packed panel wins. Measured on
/// Zen 5 with AVX-512. With AVX2 + FMA forced on Zen 4 the dot tiles at 256 rows were within
/// the machine's noise of the `gemm` crate's AVX2 kernels (docs/benchmarks.md), so the AVX2 and
/// portable tiles stop at [`FEW_ROWS`].
pub const DOT_ROWS: usize = 512;

/// Up to how many rows [`gemm`] sends `x · wᵀ` through the dot tiles at this CPU's level:
/// [`DOT_ROWS`] with AVX-512, [`FEW_ROWS`] below it.
pub fn dot_rows() -> usize {
    match simd_level() {
        Simd::Avx512 => DOT_ROWS,
        _ => FEW_ROWS,
    }
}

/// The vector instructions the few-row kernels use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    /// AVX-512F (x86-64-v4): 16 floats per vector, 32 vector registers.
    Avx512,
    /// AVX2 + FMA (x86-64-v3): 8 floats per vector, 16 registers.
    Avx2,
    /// Plain Rust, left to the compiler's auto-vectoriser.
    Portable,
}

/// The environment variable that forces a lower level than the CPU's widest: `avx512`, `avx2` or
/// `portable`, read once by [`simd_level`], so that one machine can measure and test the paths
/// of CPUs that lack its widest instructions.
pub const SIMD_ENV: &str = "CLIP_ADAPTER_SIMD";

impl Simd {
    /// Every level, widest first.
    pub const ALL: [Simd; 3] = [Simd::Avx512, Simd::Avx2, Simd::Portable];

    /// Whether this CPU can run kernels of this level.
    pub fn available(self) -> bool {
        match self {
            Simd::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The name benchmark tables print.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "AVX-512",
            Simd::Avx2 => "AVX2 + FMA",
            Simd::Portable => "portable",
        }
    }

    /// The name [`SIMD_ENV`] takes.
    pub fn env_name(self) -> &'static str {
        match self {
            Simd::Avx512 => "avx512",
            Simd::Avx2 => "avx2",
            Simd::Portable => "portable",
        }
    }

    /// The widest level this CPU runs.
    pub fn widest() -> Simd {
        Simd::ALL
            .into_iter()
            .find(|s| s.available())
            .unwrap_or(Simd::Portable)
    }
}

/// The level a value of [`SIMD_ENV`] asks for, given which levels the CPU has (`available`) and
/// its widest: the named level when the CPU has it; otherwise the widest, with the warning to
/// print (an unknown name or a level the CPU lacks is refused, never half-honoured).
pub fn requested_level(
    value: Option<&str>,
    available: impl Fn(Simd) -> bool,
    widest: Simd,
) -> (Simd, Option<String>) {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return (widest, None);
    };
    let names = || {
        Simd::ALL
            .iter()
            .map(|s| s.env_name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match Simd::ALL
        .into_iter()
        .find(|s| s.env_name().eq_ignore_ascii_case(value))
    {
        Some(level) if available(level) => (level, None),
        Some(level) => (
            widest,
            Some(format!(
                "{SIMD_ENV}={value}: this CPU has no {}; using {}, its widest level",
                level.name(),
                widest.name()
            )),
        ),
        None => (
            widest,
            Some(format!(
                "{SIMD_ENV}={value} is not a SIMD level (one of: {}); using {}, this CPU's widest",
                names(),
                widest.name()
            )),
        ),
    }
}

/// The level of our kernels: the widest this CPU runs, or the lower one [`SIMD_ENV`] names;
/// decided once, with a warning on stderr if the variable's value is refused.
pub fn simd_level() -> Simd {
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let value = std::env::var_os(SIMD_ENV).map(|v| v.to_string_lossy().into_owned());
        let (level, warning) = requested_level(value.as_deref(), Simd::available, Simd::widest());
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        let crate_level = gemm_crate_level();
        if value.is_some() && level_rank(crate_level) < level_rank(level) {
            // Stated, not silent: candle's matmul (the transformer towers' products above
            // FEW_ROWS rows) goes through the crate's own dispatch, which nothing can lower.
            let how = if cfg!(feature = "gemm-avx512") && crate_level == Simd::Avx512 {
                "; build with --no-default-features to leave them out"
            } else {
                " (the crate runs nothing narrower on a CPU with FMA)"
            };
            eprintln!(
                "warning: {SIMD_ENV}={}: candle's matrix products still run the gemm crate's {} \
                 kernels{how}",
                level.env_name(),
                crate_level.name()
            );
        }
        level
    })
}

/// Widest first: 0 for AVX-512.
fn level_rank(s: Simd) -> usize {
    Simd::ALL.iter().position(|&l| l == s).unwrap_or(0)
}

/// The level the `gemm` crate's own run-time dispatch picks (`gemm::gemm`, which candle's matmul
/// calls): AVX-512 when it was built with those kernels (feature `gemm-avx512`) and the CPU has
/// AVX-512F, else AVX2 + FMA, else its scalar kernels. It reads no setting of ours.
pub fn gemm_crate_level() -> Simd {
    if cfg!(feature = "gemm-avx512") && Simd::Avx512.available() {
        Simd::Avx512
    } else if Simd::Avx2.available() {
        Simd::Avx2
    } else {
        Simd::Portable
    }
}

/// The level of our blocked GEMM (the products [`gemm`] does not route to the few-row tiles):
/// [`simd_level`], or AVX2 + FMA in a build without the `gemm` crate's AVX-512 kernels.
pub fn blocked_level() -> Simd {
    blocked_cap(simd_level())
}

/// The `gemm` crate's kernels closest to `level` in this build: it has no AVX-512 ones without
/// the `gemm-avx512` feature.
fn blocked_cap(level: Simd) -> Simd {
    match level {
        Simd::Avx512 if !cfg!(feature = "gemm-avx512") => Simd::Avx2,
        level => level,
    }
}

/// What a benchmark table prints as its SIMD level: ours, and the `gemm` crate's own dispatch
/// (in candle's matmul) where that differs.
pub fn simd_summary() -> String {
    let (ours, blocked, crate_level) = (simd_level(), blocked_level(), gemm_crate_level());
    let mut s = ours.name().to_string();
    if blocked != ours {
        s += &format!(", blocked GEMM {}", blocked.name());
    }
    if crate_level != blocked {
        s += &format!(", candle's matmul {}", crate_level.name());
    }
    s
}

/// `c (m×n) = op(a) · op(b)`, or `c += …` when `accumulate`. `op(a)` is `m×k`: `a` is stored
/// `m×k` row-major, or `k×m` when `ta` (and likewise `b`, `k×n` or `n×k` when `tb`). Transposes
/// are strides, never copies.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm: buffer too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // (row stride, column stride) of op(a) and op(b).
    let (a_rs, a_cs) = if ta { (1, m) } else { (k, 1) };
    let simd = simd_level();
    // `x · wᵀ` with few rows (a batch of features against a classifier, one image's tokens):
    // blocked kernels pad such products to their tall tiles; dot products do not. Up to a few
    // hundred rows, blocks of them through the dot tiles still beat the blocked GEMM, whose
    // packing of a transposed `b` costs it half its rate at these sizes (docs/benchmarks.md).
    if !ta && tb && m <= dot_rows() {
        for i0 in (0..m).step_by(FEW_ROWS) {
            let rows = FEW_ROWS.min(m - i0);
            few_rows_abt_into(
                simd,
                &a[i0 * k..],
                b,
                &mut c[i0 * n..],
                rows,
                k,
                n,
                accumulate,
            );
        }
        return;
    }
    // `b` row-major with few rows of op(a) (`dY · W`, a bottleneck's `x · W1`) or a short inner
    // dimension with a transposed `a` (the weight gradients `dYᵀ · X` over a batch).
    if !tb && (m <= FEW_ROWS || (ta && k <= FEW_ROWS)) {
        broadcast_gemm(simd, a, (a_rs, a_cs), b, c, m, k, n, accumulate);
        return;
    }
    blocked_gemm(a, ta, b, tb, c, m, k, n, accumulate);
}

/// As [`gemm`], always through the `gemm` crate's blocked GEMM, with the microkernels of
/// [`blocked_level`] (the few-row routing's alternative, which the products benchmark measures).
#[allow(clippy::too_many_arguments)]
pub fn blocked_gemm(
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    blocked_gemm_at(blocked_level(), a, ta, b, tb, c, m, k, n, accumulate);
}

/// [`blocked_gemm`] with the `gemm` crate's kernels of `level` (or the closest this build has).
///
/// # Panics
/// If a buffer is too small or `level` is not [`Simd::available`] on this CPU.
#[allow(clippy::too_many_arguments)]
pub fn blocked_gemm_at(
    level: Simd,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm: buffer too small"
    );
    assert!(level.available(), "blocked matmul: {level:?} not available");
    if m == 0 || n == 0 {
        return;
    }
    let level = blocked_cap(level);
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // Below ~1 MFLOP the thread hand-off costs more than it saves.
    let parallelism = if m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above bounds every index gemm touches: dst m×n with row stride n; op(a)
    // m×k and op(b) k×n address exactly the m·k and k·n elements of their buffers through the
    // strides chosen above; `level` is available (checked above).
    unsafe {
        if level == gemm_crate_level() {
            // The crate's own dispatch picks the same kernels, already compiled (and optimised)
            // in the crate itself.
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                accumulate,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        } else {
            let p = GemmArgs {
                m,
                n,
                k,
                dst: c.as_mut_ptr(),
                dst_rs: n as isize,
                read_dst: accumulate,
                lhs: a.as_ptr(),
                lhs_cs: a_cs,
                lhs_rs: a_rs,
                rhs: b.as_ptr(),
                rhs_cs: b_cs,
                rhs_rs: b_rs,
                parallelism,
            };
            gemm_at_level(level, p);
        }
    }
}

/// The arguments of one call to the `gemm` crate's blocked f32 GEMM (unit column stride of dst,
/// `alpha = beta = 1`, no conjugation).
struct GemmArgs {
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    read_dst: bool,
    lhs: *const f32,
    lhs_cs: isize,
    lhs_rs: isize,
    rhs: *const f32,
    rhs_cs: isize,
    rhs_rs: isize,
    parallelism: gemm::Parallelism,
}

/// The `gemm` crate's blocked GEMM with the microkernels of `level`: its own dispatch
/// (`gemm_f32::gemm::f32::get_gemm_fn`) always takes the widest the CPU has and cannot be told
/// otherwise, but the pieces it assembles are public, so this assembles them as its
/// `gemm_basic` does (`gemm_common::gemm::__inject_mod`: `N` floats per vector, the level's
/// microkernel tables, `a * b + c`), with another level's tables.
///
/// # Safety
/// As `gemm::gemm` for these arguments, and `level` must be available on this CPU.
#[inline(never)]
unsafe fn gemm_at_level(level: Simd, p: GemmArgs) {
    macro_rules! call {
        ($simd:ty, $kernels:ident, $n:expr) => {{
            use gemm_f32::microkernel::$kernels::f32 as kernels;
            const N: usize = $n;
            gemm_common::gemm::gemm_basic_generic::<
                _,
                f32,
                N,
                { kernels::MR_DIV_N * N },
                { kernels::NR },
                { kernels::MR_DIV_N },
                { kernels::H_M },
                { kernels::H_N },
            >(
                <$simd as gemm_common::simd::MixedSimd<f32, f32, f32, f32>>::try_new()
                    .expect("the SIMD level was checked available"),
                p.m,
                p.n,
                p.k,
                p.dst,
                1,
                p.dst_rs,
                p.read_dst,
                p.lhs,
                p.lhs_cs,
                p.lhs_rs,
                p.rhs,
                p.rhs_cs,
                p.rhs_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                |a, b, c| a * b + c,
                &kernels::UKR,
                &kernels::H_UKR,
                false,
                p.parallelism,
            )
        }};
    }
    match level {
        #[cfg(all(target_arch = "x86_64", feature = "gemm-avx512"))]
        Simd::Avx512 => call!(gemm_common::simd::V4, avx512f, 16),
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => call!(gemm_common::simd::V3, fma, 8),
        _ => call!(gemm_common::simd::Scalar, scalar, 1),
    }
}

/// `c (m×n) = a · bᵀ` in f64, `a` m×k and `b` n×k row-major: the products of the methods that
/// keep double precision (ProKeR's kernel matrices), through the same blocked GEMM.
pub fn gemm_f64_abt(a: &[f64], b: &[f64], c: &mut [f64], m: usize, k: usize, n: usize) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm_f64_abt: buffer too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c[..m * n].fill(0.0);
        return;
    }
    let parallelism = if m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above bounds every index gemm touches: dst m×n with row stride n, `a`
    // m×k with row stride k, and bᵀ (k×n) read from `b` (n×k row-major) with row stride 1 and
    // column stride k.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A dot product written so that the compiler vectorises it without reassociation flags.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociation flags.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The output of a parallel kernel, shared by tasks that write disjoint tiles of it.
#[derive(Clone, Copy)]
pub(crate) struct Out(pub *mut f32);

impl Out {
    /// The element `offset` places further (a method, so that closures capture the whole `Out`).
    ///
    /// # Safety
    /// As `pointer::add`: the result must stay inside the allocation.
    pub(crate) unsafe fn add(self, offset: usize) -> Out {
        Out(self.0.add(offset))
    }
}
// SAFETY: every task writes only its own tile (disjoint index sets), and the owning `&mut [f32]`
// outlives the parallel loop that uses the pointer.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// `x · wᵀ` for `x` (M×K) and `w` (N×K), routed as [`gemm`] routes it: the dot tiles up to
/// [`dot_rows`] rows, the blocked GEMM beyond.
pub fn abt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    gemm(x, false, w, true, &mut y, m, k, n, false);
    y
}

/// Rows of `w` per parallel task: 32 rows of K = 768 floats (96 KiB) stay in L2 while all
/// M inputs pass over them.
const DOT_BLOCK: usize = 32;

/// `c (m×n) = x · wᵀ` (or `+=`) with the dot-tile kernel of level `simd`.
///
/// # Panics
/// If a buffer is too small or `simd` is not [`Simd::available`] on this CPU.
#[allow(clippy::too_many_arguments)]
pub fn few_rows_abt_into(
    simd: Simd,
    x: &[f32],
    w: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && c.len() >= m * n,
        "few-row matmul: buffer too small"
    );
    assert!(simd.available(), "few-row matmul: {simd:?} not available");
    if m == 0 || n == 0 {
        return;
    }
    let out = Out(c.as_mut_ptr());
    let blocks = n.div_ceil(DOT_BLOCK);
    let task = |blk: usize| {
        let (j0, j1) = (blk * DOT_BLOCK, ((blk + 1) * DOT_BLOCK).min(n));
        let rows = Strided {
            x: x.as_ptr(),
            ldx: k,
            w: w.as_ptr(),
            ldw: k,
            c: out,
            ldc: n,
            k,
        };
        // SAFETY: rows i < m and columns j0..j1 < n of x, w and c are inside the buffers (checked
        // above); this task alone writes columns j0..j1 of c; `simd` is available.
        unsafe { dot_block(simd, rows, m, (j0, j1), accumulate) }
    };
    run_tasks(blocks, m * n * k, task);
}

/// Rows of length `k` of `x` and `w`, and the output `c`, each with its own row stride.
#[derive(Clone, Copy)]
pub(crate) struct Strided {
    pub x: *const f32,
    pub ldx: usize,
    pub w: *const f32,
    pub ldw: usize,
    pub c: Out,
    pub ldc: usize,
    pub k: usize,
}

/// Columns `j0..j1` of `c = x · wᵀ` for rows `0..m`.
///
/// # Safety
/// Rows `0..m` of `x`, `j0..j1` of `w` (each `k` long) and the tile of `c` must be inside their
/// allocations, no other thread may touch that tile, and `simd` must be available.
pub(crate) unsafe fn dot_block(
    simd: Simd,
    s: Strided,
    m: usize,
    (j0, j1): (usize, usize),
    accumulate: bool,
) {
    let Strided {
        x,
        ldx,
        w,
        ldw,
        c,
        ldc,
        k,
    } = s;
    let (mr, nr) = match simd {
        Simd::Avx512 => (4, 4),
        Simd::Avx2 => (3, 4),
        Simd::Portable => (1, 1),
    };
    // Weight rows outside, input rows inside: a tile's weight rows stay in L1 while the inputs
    // stream from L2.
    for j in (j0..j1).step_by(nr) {
        let cols = nr.min(j1 - j);
        for i in (0..m).step_by(mr) {
            let rows = mr.min(m - i);
            let xi = x.add(i * ldx);
            let wj = w.add(j * ldw);
            let tile = match simd {
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => dot_tile_avx512(xi, ldx, wj, ldw, k, rows, cols),
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => dot_tile_avx2(xi, ldx, wj, ldw, k, rows, cols),
                _ => {
                    let mut t = [[0f32; 4]; 4];
                    for (r, row) in t.iter_mut().enumerate().take(rows) {
                        for (q, v) in row.iter_mut().enumerate().take(cols) {
                            *v = dot(
                                std::slice::from_raw_parts(xi.add(r * ldx), k),
                                std::slice::from_raw_parts(wj.add(q * ldw), k),
                            );
                        }
                    }
                    t
                }
            };
            for (r, row) in tile.iter().enumerate().take(rows) {
                let dst = c.0.add((i + r) * ldc + j);
                for (q, v) in row.iter().enumerate().take(cols) {
                    if accumulate {
                        *dst.add(q) += v;
                    } else {
                        *dst.add(q) = *v;
                    }
                }
            }
        }
    }
}

/// Up to 4×4 dot products of `rows` rows at `x` with `cols` rows at `w` (both k long, row
/// stride k): 16 accumulators, each 16-float step loads 8 vectors for 16 FMAs; the tail is a
/// masked load, so no scalar loop.
// Indexed loops over register arrays unroll into named registers.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_tile_avx512(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    k: usize,
    rows: usize,
    cols: usize,
) -> [[f32; 4]; 4] {
    match (rows, cols) {
        (4, 4) => dot_tile_avx512_n::<4, 4>(x, ldx, w, ldw, k),
        (4, 3) => dot_tile_avx512_n::<4, 3>(x, ldx, w, ldw, k),
        (4, 2) => dot_tile_avx512_n::<4, 2>(x, ldx, w, ldw, k),
        (4, 1) => dot_tile_avx512_n::<4, 1>(x, ldx, w, ldw, k),
        (3, 4) => dot_tile_avx512_n::<3, 4>(x, ldx, w, ldw, k),
        (2, 4) => dot_tile_avx512_n::<2, 4>(x, ldx, w, ldw, k),
        (1, 4) => dot_tile_avx512_n::<1, 4>(x, ldx, w, ldw, k),
        (r, c) => {
            // Corner tiles: at most one per product, so one general shape serves them.
            let mut t = [[0f32; 4]; 4];
            for a in 0..r {
                for b in 0..c {
                    t[a][b] =
                        dot_tile_avx512_n::<1, 1>(x.add(a * ldx), ldx, w.add(b * ldw), ldw, k)[0]
                            [0];
                }
            }
            t
        }
    }
}

// Indexed loops over register arrays unroll into named registers.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn dot_tile_avx512_n<const R: usize, const C: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    k: usize,
) -> [[f32; 4]; 4] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut p = 0;
    while p + 16 <= k {
        let mut xv = [_mm512_setzero_ps(); R];
        for (r, v) in xv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(x.add(r * ldx + p));
        }
        for q in 0..C {
            let wv = _mm512_loadu_ps(w.add(q * ldw + p));
            for r in 0..R {
                acc[r][q] = _mm512_fmadd_ps(xv[r], wv, acc[r][q]);
            }
        }
        p += 16;
    }
    if p < k {
        let mask = ((1u32 << (k - p)) - 1) as __mmask16;
        let mut xv = [_mm512_setzero_ps(); R];
        for (r, v) in xv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, x.add(r * ldx + p));
        }
        for q in 0..C {
            let wv = _mm512_maskz_loadu_ps(mask, w.add(q * ldw + p));
            for r in 0..R {
                acc[r][q] = _mm512_fmadd_ps(xv[r], wv, acc[r][q]);
            }
        }
    }
    let mut out = [[0f32; 4]; 4];
    for r in 0..R {
        for q in 0..C {
            out[r][q] = _mm512_reduce_add_ps(acc[r][q]);
        }
    }
    out
}

/// The AVX2 tile: up to 3×4 dot products, 12 accumulators of 8 floats, 3 input rows and one
/// weight vector (the 16 registers). Two FMA pipes of 4-5 cycles' latency need 8-10 independent
/// sums in flight: the first tile, 2×4 (8 accumulators), ran the products of one ViT-B/32 image
/// at 114-126 GFLOP/s against MKL's 186 on an Intel Xeon (Emerald Rapids) with AVX2 forced.
// Indexed loops over register arrays unroll into named registers.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_tile_avx2(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    k: usize,
    rows: usize,
    cols: usize,
) -> [[f32; 4]; 4] {
    match (rows, cols) {
        (3, 4) => dot_tile_avx2_n::<3, 4>(x, ldx, w, ldw, k),
        (2, 4) => dot_tile_avx2_n::<2, 4>(x, ldx, w, ldw, k),
        (1, 4) => dot_tile_avx2_n::<1, 4>(x, ldx, w, ldw, k),
        (r, c) => {
            let mut t = [[0f32; 4]; 4];
            for a in 0..r {
                for b in 0..c {
                    t[a][b] =
                        dot_tile_avx2_n::<1, 1>(x.add(a * ldx), ldx, w.add(b * ldw), ldw, k)[0][0];
                }
            }
            t
        }
    }
}

// Indexed loops over register arrays unroll into named registers.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_tile_avx2_n<const R: usize, const C: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    ldw: usize,
    k: usize,
) -> [[f32; 4]; 4] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut p = 0;
    while p + 8 <= k {
        let mut xv = [_mm256_setzero_ps(); R];
        for (r, v) in xv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(x.add(r * ldx + p));
        }
        for q in 0..C {
            let wv = _mm256_loadu_ps(w.add(q * ldw + p));
            for r in 0..R {
                acc[r][q] = _mm256_fmadd_ps(xv[r], wv, acc[r][q]);
            }
        }
        p += 8;
    }
    let mut out = [[0f32; 4]; 4];
    for r in 0..R {
        for q in 0..C {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][q]);
            let tail: f32 = (p..k)
                .map(|t| *x.add(r * ldx + t) * *w.add(q * ldw + t))
                .sum();
            out[r][q] = lanes.iter().sum::<f32>() + tail;
        }
    }
    out
}

/// Products of fewer multiply-adds (`m·n·k`) run on the calling thread: handing them to the pool
/// costs more than it saves.
const PARALLEL_WORK: usize = 1 << 18;

/// `task(t)` for every `t < tasks`, over the pool unless there is one task or the product's
/// `work` (`m·n·k`) is below [`PARALLEL_WORK`]. Every product kernel splits its output into
/// tasks that write disjoint tiles and runs them through here.
pub(crate) fn run_tasks(tasks: usize, work: usize, task: impl Fn(usize) + Send + Sync) {
    if work < PARALLEL_WORK || tasks <= 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Columns of `b` (and `c`) per parallel task of the broadcast kernel.
const BROADCAST_COLS: usize = 256;
/// Rows of `op(a)` per parallel task when there are many (a weight gradient's `d` rows).
const BROADCAST_ROWS: usize = 48;
/// Steps of the inner dimension per pass: 512 rows of a 64-column panel of `b` are 128 KiB, which
/// stay in L2 while every row tile passes over them.
pub(crate) const BROADCAST_DEPTH: usize = 512;

/// `c (m×n) = op(a) · b` (or `+=`), `op(a)` with strides `(a_rs, a_cs)`, `b` row-major `k×n`,
/// with the broadcast-tile kernel of level `simd`.
///
/// # Panics
/// If a stride reaches outside `a`, a buffer is too small, or `simd` is not available.
#[allow(clippy::too_many_arguments)]
pub fn broadcast_gemm(
    simd: Simd,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(simd.available(), "broadcast matmul: {simd:?} not available");
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.len() > (m - 1) * a_rs + k.saturating_sub(1) * a_cs
            && b.len() >= k * n
            && c.len() >= m * n,
        "broadcast matmul: buffer too small"
    );
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let out = Out(c.as_mut_ptr());
    let row_blocks = m.div_ceil(BROADCAST_ROWS);
    // Narrower column blocks when there would be fewer tasks than threads (a 32-row batch
    // against 256 columns was one task, on one core, with the other idle).
    let mut block_cols = BROADCAST_COLS;
    while row_blocks * n.div_ceil(block_cols) < rayon::current_num_threads() && block_cols > 64 {
        block_cols /= 2;
    }
    let col_blocks = n.div_ceil(block_cols);
    let task = |t: usize| {
        let (ib, jb) = (t / col_blocks, t % col_blocks);
        let (i0, i1) = (ib * BROADCAST_ROWS, ((ib + 1) * BROADCAST_ROWS).min(m));
        let (j0, j1) = (jb * block_cols, ((jb + 1) * block_cols).min(n));
        // SAFETY: every index is inside the buffers (checked above); this task alone writes rows
        // i0..i1 × columns j0..j1 of c; `simd` is available.
        unsafe {
            broadcast_block(
                simd,
                Operands {
                    a: a.as_ptr(),
                    a_rs,
                    a_cs,
                    b: b.as_ptr(),
                    ldb: n,
                    c: out,
                    ldc: n,
                    k,
                },
                (i0, i1),
                (j0, j1),
                accumulate,
            )
        }
    };
    run_tasks(row_blocks * col_blocks, m * n * k, task);
}

/// `op(a)` (`m×k`, any strides), `b` (`k×n`, row stride `ldb`) and `c` (row stride `ldc`).
#[derive(Clone, Copy)]
pub(crate) struct Operands {
    pub a: *const f32,
    pub a_rs: usize,
    pub a_cs: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub c: Out,
    pub ldc: usize,
    pub k: usize,
}

/// Rows `i0..i1` × columns `j0..j1` of `c = op(a) · b` (or `+=`).
///
/// # Safety
/// Every element of those rows of `op(a)`, columns of `b` and the tile of `c` must be inside its
/// allocation, no other thread may touch that tile, and `simd` must be available.
pub(crate) unsafe fn broadcast_block(
    simd: Simd,
    o: Operands,
    (i0, i1): (usize, usize),
    (j0, j1): (usize, usize),
    accumulate: bool,
) {
    let Operands {
        a,
        a_rs,
        a_cs,
        b,
        ldb,
        c,
        ldc,
        k,
    } = o;
    let (mr, nr) = match simd {
        Simd::Avx512 => (6, 64),
        Simd::Avx2 => (6, 16),
        Simd::Portable => (4, 16),
    };
    let pack = packs_b(i1 - i0, mr, ldb, nr);
    for p0 in (0..k).step_by(BROADCAST_DEPTH) {
        let depth = BROADCAST_DEPTH.min(k - p0);
        // The first pass over the inner dimension stores, the later ones add.
        let add = accumulate || p0 > 0;
        for j in (j0..j1).step_by(nr) {
            let cols = nr.min(j1 - j);
            let (bj, ldbj) = match pack {
                true => (pack_panel(b.add(p0 * ldb + j), ldb, depth, cols, nr), nr),
                false => (b.add(p0 * ldb + j), ldb),
            };
            for i in (i0..i1).step_by(mr) {
                let rows = mr.min(i1 - i);
                let ai = a.add(i * a_rs + p0 * a_cs);
                let cij = c.0.add(i * ldc + j);
                let t = Tile {
                    sums: TileSums {
                        a: ai,
                        a_rs,
                        a_cs,
                        b: bj,
                        ldb: ldbj,
                        depth,
                        cols,
                    },
                    c: cij,
                    ldc,
                    add,
                    first: i == i0,
                };
                match simd {
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx512 => broadcast_tile_avx512(t, rows),
                    #[cfg(target_arch = "x86_64")]
                    Simd::Avx2 => broadcast_tile_avx2(t, rows),
                    _ => broadcast_tile_portable(t, rows),
                }
            }
        }
    }
}

/// Whether [`broadcast_block`] copies each `depth × nr` panel of `b` into contiguous rows before
/// its row tiles pass over it: when several tiles share the panel and its rows lie a page or
/// more apart (`dY · W` against a 1000 × 1024 classifier: 256 bytes per row, 4 KiB apart). Each
/// row then sits in its own page, which neither the hardware prefetchers (they stop at page
/// boundaries) nor the first-level TLB (512 rows, 512 pages) follow, and every tile paid for it.
fn packs_b(rows: usize, mr: usize, ldb: usize, nr: usize) -> bool {
    rows > mr && ldb * std::mem::size_of::<f32>() >= PAGE_BYTES && ldb != nr
}

const PAGE_BYTES: usize = 4096;

thread_local! {
    /// Each thread's copy of the panel of `b` its current block works on.
    static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Copies `depth` rows of `cols` floats (row stride `ldb`) into this thread's panel buffer with
/// row stride `nr`, and returns the buffer's start. The pointer stays valid until this thread's
/// next call.
///
/// # Safety
/// The rows must be inside `b`'s allocation.
unsafe fn pack_panel(
    b: *const f32,
    ldb: usize,
    depth: usize,
    cols: usize,
    nr: usize,
) -> *const f32 {
    PANEL.with_borrow_mut(|panel| {
        if panel.len() < depth * nr {
            panel.resize(depth * nr, 0.0);
        }
        for p in 0..depth {
            let src = std::slice::from_raw_parts(b.add(p * ldb), cols);
            panel[p * nr..p * nr + cols].copy_from_slice(src);
        }
        panel.as_ptr()
    })
}

/// What one tile of the broadcast kernel sums: `Σ_p a[r·a_rs + p·a_cs] · b[p·ldb + q]` for its
/// rows `r` and its first `cols` columns `q`.
#[derive(Clone, Copy)]
pub(crate) struct TileSums {
    pub a: *const f32,
    pub a_rs: usize,
    pub a_cs: usize,
    pub b: *const f32,
    pub ldb: usize,
    pub depth: usize,
    pub cols: usize,
}

/// One output tile of the broadcast kernel: `c[r][q] (+)=` its sums.
#[derive(Clone, Copy)]
struct Tile {
    sums: TileSums,
    c: *mut f32,
    ldc: usize,
    add: bool,
    /// The first row tile over this block of `b`, whose rows come from beyond L2; the AVX-512
    /// tile then prefetches them itself. Measured on an Intel Xeon (Emerald Rapids) only: the
    /// encoders' panel products 4-5 % faster at 197 rows and above; an unpacked `b` read 256
    /// bytes per row 4 KiB apart (`dY·W` of a training step) unchanged.
    first: bool,
}

/// Rows of `b` ahead that the first row tile prefetches: about 300 cycles of a 6-row tile's FMAs,
/// an L3 read's latency (not tuned).
const PREFETCH_ROWS: usize = 24;

unsafe fn broadcast_tile_portable(t: Tile, rows: usize) {
    if !t.add {
        for r in 0..rows {
            std::slice::from_raw_parts_mut(t.c.add(r * t.ldc), t.sums.cols).fill(0.0);
        }
    }
    broadcast_add_portable(&t.sums, rows, t.c, t.ldc);
}

/// Adds a tile's sums, row by row in the order of the inner dimension, to `c` (row stride `ldc`).
///
/// # Safety
/// The tile's operands and `rows` rows of `cols` floats of `c` must be inside their allocations.
pub(crate) unsafe fn broadcast_add_portable(t: &TileSums, rows: usize, c: *mut f32, ldc: usize) {
    for r in 0..rows {
        let crow = std::slice::from_raw_parts_mut(c.add(r * ldc), t.cols);
        for p in 0..t.depth {
            let av = *t.a.add(r * t.a_rs + p * t.a_cs);
            let brow = std::slice::from_raw_parts(t.b.add(p * t.ldb), t.cols);
            crow.iter_mut().zip(brow).for_each(|(c, b)| *c += av * b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn broadcast_tile_avx512(t: Tile, rows: usize) {
    #[target_feature(enable = "avx512f")]
    unsafe fn with<const R: usize>(t: Tile) {
        if t.first {
            broadcast_tile_avx512_n::<R, true>(t)
        } else {
            broadcast_tile_avx512_n::<R, false>(t)
        }
    }
    match rows {
        6 => with::<6>(t),
        5 => with::<5>(t),
        4 => with::<4>(t),
        3 => with::<3>(t),
        2 => with::<2>(t),
        _ => with::<1>(t),
    }
}

/// R rows × 64 columns: 4R accumulators (24 of the 32 registers at R = 6); per step 4 loads of
/// `b` and R broadcasts of `a` feed 4R FMAs. Columns past `cols` are masked off.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn broadcast_tile_avx512_n<const R: usize, const PREFETCH: bool>(t: Tile) {
    use std::arch::x86_64::*;
    let mask = tile_masks_avx512(t.sums.cols);
    let acc = broadcast_acc_avx512::<R, PREFETCH>(&t.sums, &mask);
    for (r, acc) in acc.iter().enumerate() {
        let crow = t.c.add(r * t.ldc);
        for (q, &v) in acc.iter().enumerate() {
            let v = match t.add {
                true => _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[q], crow.add(16 * q))),
                false => v,
            };
            _mm512_mask_storeu_ps(crow.add(16 * q), mask[q], v);
        }
    }
}

/// The masks of an AVX-512 tile's four vectors for its first `cols` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn tile_masks_avx512(cols: usize) -> [std::arch::x86_64::__mmask16; 4] {
    std::array::from_fn(|q| {
        let left = cols.saturating_sub(16 * q).min(16);
        ((1u32 << left) - 1) as std::arch::x86_64::__mmask16
    })
}

/// The sums of an R-row AVX-512 tile, `Σ_p a[r][p] · b[p][16q..16q + 16]`, in registers (its
/// epilogue is the caller's: a store, or an optimiser's step in `kernels::sgd_tiles`).
// Indexed loops over register arrays unroll into named registers.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) unsafe fn broadcast_acc_avx512<const R: usize, const PREFETCH: bool>(
    t: &TileSums,
    mask: &[std::arch::x86_64::__mmask16; 4],
) -> [[std::arch::x86_64::__m512; 4]; R] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    if t.cols == 64 {
        for p in 0..t.depth {
            let brow = t.b.add(p * t.ldb);
            if PREFETCH {
                // A prefetch never faults: past the block's last row it only wastes a slot.
                let ahead = brow.wrapping_add(PREFETCH_ROWS * t.ldb) as *const i8;
                for q in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * q));
                }
            }
            let bv = [
                _mm512_loadu_ps(brow),
                _mm512_loadu_ps(brow.add(16)),
                _mm512_loadu_ps(brow.add(32)),
                _mm512_loadu_ps(brow.add(48)),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*t.a.add(r * t.a_rs + p * t.a_cs));
                for q in 0..4 {
                    acc[q] = _mm512_fmadd_ps(av, bv[q], acc[q]);
                }
            }
        }
    } else {
        for p in 0..t.depth {
            let brow = t.b.add(p * t.ldb);
            let mut bv = [_mm512_setzero_ps(); 4];
            for q in 0..4 {
                bv[q] = _mm512_maskz_loadu_ps(mask[q], brow.add(16 * q));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*t.a.add(r * t.a_rs + p * t.a_cs));
                for q in 0..4 {
                    acc[q] = _mm512_fmadd_ps(av, bv[q], acc[q]);
                }
            }
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn broadcast_tile_avx2(t: Tile, rows: usize) {
    match rows {
        6 => broadcast_tile_avx2_n::<6>(t),
        5 => broadcast_tile_avx2_n::<5>(t),
        4 => broadcast_tile_avx2_n::<4>(t),
        3 => broadcast_tile_avx2_n::<3>(t),
        2 => broadcast_tile_avx2_n::<2>(t),
        _ => broadcast_tile_avx2_n::<1>(t),
    }
}

/// R rows × 16 columns: 2R accumulators (12 of the 16 registers at R = 6, enough independent
/// FMAs to cover their latency); columns past `cols` through AVX2's masked loads, full tiles
/// through plain ones (masked stores are microcoded on AMD cores). The first version, 4 rows and
/// masked accesses on every tile, ran at 50–70 % of the `gemm` crate's AVX2 rate on Zen 4; the
/// three changes were measured together (docs/benchmarks.md).
// Indexed loops over register arrays unroll into named registers.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn broadcast_tile_avx2_n<const R: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let cols = t.sums.cols;
    let mask = tile_masks_avx2(cols);
    let acc = broadcast_acc_avx2::<R>(&t.sums, &mask);
    for (r, acc) in acc.iter().enumerate() {
        let crow = t.c.add(r * t.ldc);
        for q in 0..2 {
            let mut v = acc[q];
            // A masked store is microcoded on AMD cores: with a short inner dimension (a weight
            // gradient over a 32-row batch) it costs as much as the tile's FMAs.
            if cols == 16 {
                if t.add {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(crow.add(8 * q)));
                }
                _mm256_storeu_ps(crow.add(8 * q), v);
            } else {
                if t.add {
                    v = _mm256_add_ps(v, _mm256_maskload_ps(crow.add(8 * q), mask[q]));
                }
                _mm256_maskstore_ps(crow.add(8 * q), mask[q], v);
            }
        }
    }
}

/// The masks of an AVX2 tile's two vectors for its first `cols` columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn tile_masks_avx2(cols: usize) -> [std::arch::x86_64::__m256i; 2] {
    use std::arch::x86_64::*;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    [
        _mm256_cmpgt_epi32(_mm256_set1_epi32(cols.min(8) as i32), lane),
        _mm256_cmpgt_epi32(_mm256_set1_epi32(cols.saturating_sub(8) as i32), lane),
    ]
}

/// The sums of an R-row AVX2 tile, `Σ_p a[r][p] · b[p][8q..8q + 8]`, in registers.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) unsafe fn broadcast_acc_avx2<const R: usize>(
    t: &TileSums,
    mask: &[std::arch::x86_64::__m256i; 2],
) -> [[std::arch::x86_64::__m256; 2]; R] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    if t.cols == 16 {
        for p in 0..t.depth {
            let brow = t.b.add(p * t.ldb);
            let bv = [_mm256_loadu_ps(brow), _mm256_loadu_ps(brow.add(8))];
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*t.a.add(r * t.a_rs + p * t.a_cs));
                acc[0] = _mm256_fmadd_ps(av, bv[0], acc[0]);
                acc[1] = _mm256_fmadd_ps(av, bv[1], acc[1]);
            }
        }
    } else {
        for p in 0..t.depth {
            let brow = t.b.add(p * t.ldb);
            let bv = [
                _mm256_maskload_ps(brow, mask[0]),
                _mm256_maskload_ps(brow.add(8), mask[1]),
            ];
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_ps(*t.a.add(r * t.a_rs + p * t.a_cs));
                acc[0] = _mm256_fmadd_ps(av, bv[0], acc[0]);
                acc[1] = _mm256_fmadd_ps(av, bv[1], acc[1]);
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::SplitMix64::from_state(seed);
        (0..len).map(|_| rng.range(-1.0, 1.0)).collect()
    }

    /// The reference: the `gemm` crate, unthreaded, on the same strides.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        a: &[f32],
        ta: bool,
        b: &[f32],
        tb: bool,
        c: &mut [f32],
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
        let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
        // SAFETY: buffers of the sizes the strides address (the callers allocate them so).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c.as_mut_ptr(),
                1,
                n as isize,
                accumulate,
                a.as_ptr(),
                a_cs,
                a_rs,
                b.as_ptr(),
                b_cs,
                b_rs,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }

    fn levels() -> Vec<Simd> {
        [Simd::Avx512, Simd::Avx2, Simd::Portable]
            .into_iter()
            .filter(|s| s.available())
            .collect()
    }

    /// Tolerance for sums of k products of values in [-1, 1): a few ulps of the magnitude the
    /// partial sums reach (√k for random signs, bounded by k).
    fn close(got: f32, want: f32, k: usize) -> bool {
        (got - want).abs() <= 1e-5 * (k as f32).max(1.0) + 1e-6
    }

    #[test]
    fn dot_tiles_match_the_gemm_crate_on_odd_shapes() {
        let shapes = [
            (1, 1, 1),
            (1, 7, 3),
            (3, 15, 5),
            (4, 16, 4),
            (5, 17, 9),
            (7, 33, 31),
            (50, 768, 97),
            (13, 1000, 33),
            (80, 129, 65),
            (32, 1024, 1000),
        ];
        for simd in levels() {
            for (s, &(m, k, n)) in shapes.iter().enumerate() {
                let x = values(m * k, s as u64);
                let w = values(n * k, 100 + s as u64);
                for accumulate in [false, true] {
                    let start = values(m * n, 200 + s as u64);
                    let mut want = start.clone();
                    reference(&x, false, &w, true, &mut want, m, k, n, accumulate);
                    let mut got = start.clone();
                    few_rows_abt_into(simd, &x, &w, &mut got, m, k, n, accumulate);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            close(*g, *w, k),
                            "{simd:?} ({m},{k},{n}) acc={accumulate} [{i}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn broadcast_tiles_match_the_gemm_crate_on_odd_shapes_and_strides() {
        // (m, k, n): few rows, short inner dimensions, column tails of every width, several
        // depth passes (k > 512), rows of `b` a page apart (copied into panels) with a tail.
        let shapes = [
            (1, 1, 1),
            (20, 600, 1030),
            (1, 5, 17),
            (3, 7, 63),
            (6, 16, 64),
            (7, 33, 65),
            (13, 600, 130),
            (32, 1000, 1024),
            (49, 1153, 257),
            (257, 32, 1024),
            (1024, 32, 255),
        ];
        for simd in levels() {
            for (s, &(m, k, n)) in shapes.iter().enumerate() {
                let b = values(k * n, 300 + s as u64);
                for ta in [false, true] {
                    let a = values(m * k, s as u64);
                    let strides = if ta { (1, m) } else { (k, 1) };
                    for accumulate in [false, true] {
                        let start = values(m * n, 400 + s as u64);
                        let mut want = start.clone();
                        reference(&a, ta, &b, false, &mut want, m, k, n, accumulate);
                        let mut got = start.clone();
                        broadcast_gemm(simd, &a, strides, &b, &mut got, m, k, n, accumulate);
                        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                close(*g, *w, k),
                                "{simd:?} ({m},{k},{n}) ta={ta} acc={accumulate} [{i}]: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_wrapper_matches_the_gemm_crate_for_every_transpose() {
        // Shapes on both sides of the few-row routing.
        for (s, &(m, k, n)) in [
            (5, 70, 9),
            (32, 1024, 256),
            (81, 40, 77),
            (200, 33, 150),
            (513, 17, 33),
        ]
        .iter()
        .enumerate()
        {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let a = values(m * k, s as u64);
                let b = values(k * n, 50 + s as u64);
                for accumulate in [false, true] {
                    let start = values(m * n, 90 + s as u64);
                    let mut want = start.clone();
                    reference(&a, ta, &b, tb, &mut want, m, k, n, accumulate);
                    let mut got = start.clone();
                    gemm(&a, ta, &b, tb, &mut got, m, k, n, accumulate);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            close(*g, *w, k),
                            "({m},{k},{n}) ta={ta} tb={tb} acc={accumulate} [{i}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_tile_kernels_leave_memory_outside_the_output_alone() {
        // A sub-block written into a larger buffer: the masked tails must not touch the rest.
        let (m, k, n) = (3, 20, 21);
        let a = values(m * k, 1);
        let b = values(k * n, 2);
        for simd in levels() {
            let mut c = vec![7.0f32; m * n + 40];
            broadcast_gemm(simd, &a, (k, 1), &b, &mut c, m, k, n, false);
            assert!(c[m * n..].iter().all(|&v| v == 7.0), "{simd:?}");
            let w = values(n * k, 3);
            let mut c = vec![7.0f32; m * n + 40];
            few_rows_abt_into(simd, &a, &w, &mut c, m, k, n, false);
            assert!(c[m * n..].iter().all(|&v| v == 7.0), "{simd:?}");
        }
    }

    /// `op(a) · op(b)` (+ `start` when accumulating) in f64, with the worst-case error bound of
    /// an f32 evaluation in any order: `(k + 2) · 2⁻²⁴ · (Σ_p |a b| + |c₀|)` per element (every
    /// partial sum rounds once per addition; the `+ 2` covers the products and the final add).
    #[allow(clippy::too_many_arguments)]
    fn naive(
        a: &[f32],
        ta: bool,
        b: &[f32],
        tb: bool,
        start: &[f32],
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) -> Vec<(f64, f64)> {
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut abs) = (0f64, 0f64);
                for p in 0..k {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] } as f64;
                    let y = if tb { b[j * k + p] } else { b[p * n + j] } as f64;
                    sum += x * y;
                    abs += (x * y).abs();
                }
                if accumulate {
                    sum += start[i * n + j] as f64;
                    abs += (start[i * n + j] as f64).abs();
                }
                out.push((sum, (k + 2) as f64 * f64::from(f32::EPSILON) / 2.0 * abs));
            }
        }
        out
    }

    #[test]
    fn every_level_matches_a_plain_reference_on_odd_shapes() {
        // Shapes around every vector width (1, 8, 16 floats), tile (4, 6, 16, 64) and block
        // (32, 48, 256, 512) edge, and both sides of the routing thresholds.
        let shapes = [
            (1, 1, 1),
            (2, 3, 5),
            (5, 17, 9),
            (7, 33, 65),
            (13, 600, 31),
            (49, 129, 257),
            (81, 40, 77),
            (97, 1031, 15),
        ];
        for simd in levels() {
            for (s, &(m, k, n)) in shapes.iter().enumerate() {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    let a = values(m * k, 500 + s as u64);
                    let b = values(k * n, 600 + s as u64);
                    for accumulate in [false, true] {
                        let start = values(m * n, 700 + s as u64);
                        let want = naive(&a, ta, &b, tb, &start, m, k, n, accumulate);
                        let check = |got: &[f32], what: &str| {
                            for (i, (g, &(w, tol))) in got.iter().zip(&want).enumerate() {
                                assert!(
                                    (*g as f64 - w).abs() <= tol,
                                    "{what} {simd:?} ({m},{k},{n}) ta={ta} tb={tb} \
                                     acc={accumulate} [{i}]: {g} vs {w} (tolerance {tol:e})"
                                );
                            }
                        };
                        let mut got = start.clone();
                        blocked_gemm_at(simd, &a, ta, &b, tb, &mut got, m, k, n, accumulate);
                        check(&got, "blocked");
                        if !ta && tb {
                            let mut got = start.clone();
                            few_rows_abt_into(simd, &a, &b, &mut got, m, k, n, accumulate);
                            check(&got, "dot tiles");
                        }
                        if !tb {
                            let strides = if ta { (1, m) } else { (k, 1) };
                            let mut got = start.clone();
                            broadcast_gemm(simd, &a, strides, &b, &mut got, m, k, n, accumulate);
                            check(&got, "broadcast tiles");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_level_variable_is_honoured_or_refused_with_its_value_named() {
        let all = |_: Simd| true;
        let no_avx512 = |s: Simd| s != Simd::Avx512;
        assert_eq!(
            requested_level(None, all, Simd::Avx512),
            (Simd::Avx512, None)
        );
        assert_eq!(
            requested_level(Some(" "), all, Simd::Avx512),
            (Simd::Avx512, None)
        );
        for level in Simd::ALL {
            assert_eq!(
                requested_level(Some(level.env_name()), all, Simd::Avx512),
                (level, None)
            );
        }
        assert_eq!(
            requested_level(Some("AVX2"), all, Simd::Avx512),
            (Simd::Avx2, None)
        );
        let (level, warning) = requested_level(Some("avx512"), no_avx512, Simd::Avx2);
        assert_eq!(level, Simd::Avx2);
        let warning = warning.expect("a refused level warns");
        assert!(
            warning.contains("CLIP_ADAPTER_SIMD=avx512") && warning.contains("no AVX-512"),
            "{warning}"
        );
        let (level, warning) = requested_level(Some("sse9"), all, Simd::Avx512);
        assert_eq!(level, Simd::Avx512);
        let warning = warning.expect("an unknown name warns");
        assert!(
            warning.contains("CLIP_ADAPTER_SIMD=sse9") && warning.contains("avx2"),
            "{warning}"
        );
    }

    /// Run in a child process by the test below (the level is read once per process): checks
    /// that `simd_level` is the level the parent forced, and that products at it are right.
    #[test]
    fn child_reports_the_forced_level() {
        let Ok(expected) = std::env::var("CLIP_ADAPTER_SIMD_EXPECT") else {
            return;
        };
        assert_eq!(simd_level().env_name(), expected);
        assert_eq!(blocked_level(), blocked_cap(simd_level()));
        let (m, k, n) = (100, 70, 90);
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let want = naive(&a, false, &b, true, &[], m, k, n, false);
        let mut got = vec![0f32; m * n];
        gemm(&a, false, &b, true, &mut got, m, k, n, false);
        for (g, &(w, tol)) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() <= tol, "{g} vs {w}");
        }
    }

    #[test]
    fn a_forced_level_is_honoured_in_a_fresh_process() {
        let exe = std::env::current_exe().expect("the test binary");
        let run = |value: &str, expect: Simd| {
            let out = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "kernels::matmul::tests::child_reports_the_forced_level",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(SIMD_ENV, value)
                .env("CLIP_ADAPTER_SIMD_EXPECT", expect.env_name())
                .output()
                .expect("the child test runs");
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed"),
                "{SIMD_ENV}={value}: {}\n{stderr}",
                String::from_utf8_lossy(&out.stdout)
            );
            stderr
        };
        for level in levels() {
            run(level.env_name(), level);
        }
        let widest = Simd::widest();
        let stderr = run("nonsense", widest);
        assert!(stderr.contains("CLIP_ADAPTER_SIMD=nonsense"), "{stderr}");
        if let Some(missing) = Simd::ALL.into_iter().find(|s| !s.available()) {
            let stderr = run(missing.env_name(), widest);
            assert!(stderr.contains(missing.env_name()), "{stderr}");
        }
    }

    #[test]
    fn f64_abt_matches_naive_products() {
        for (m, k, n) in [(3, 5, 4), (70, 33, 90), (1, 1, 1), (4, 0, 2)] {
            let a: Vec<f64> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f64 - 6.0) / 7.0)
                .collect();
            let b: Vec<f64> = (0..n * k)
                .map(|i| ((i * 5 % 11) as f64 - 5.0) / 3.0)
                .collect();
            let mut c = vec![f64::NAN; m * n];
            gemm_f64_abt(&a, &b, &mut c, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                    let got = c[i * n + j];
                    assert!(
                        (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                        "{m}x{k}x{n}"
                    );
                }
            }
        }
    }
}
