//! Convolution kernels for the ResNet tower, on channels-last (NHWC) f32 feature maps.
//!
//! In NHWC a 1×1 convolution is one GEMM over all pixels of the batch, and a k×k convolution is
//! a GEMM over patches whose rows are gathered with one `memcpy` of C channels per tap. The
//! patch matrix is built a bounded chunk of output pixels at a time, so memory stays flat at
//! batch 32, and the GEMM writes straight into the output; bias (a folded batch norm) and ReLU
//! are applied in the same parallel pass afterwards.

use std::cell::RefCell;
use std::sync::Arc;

use rayon::prelude::*;

use crate::clip::precision::Precision;
use crate::kernels::bf16::PackedWeight;

thread_local! {
    /// Buffers of dropped feature maps, reused by the next layers. A ResNet forward allocates
    /// tens of megabytes per layer; fresh allocations of that size come from the OS as new pages
    /// and page faults then cost a third of the forward (measured with `perf` on RN50, batch 1).
    static POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of at least `len` floats with unspecified contents (reused), or zeros (fresh).
/// A buffer keeps the length of its largest use: its values past a smaller map stay written,
/// so a larger map later need not zero them again (the `memset` was 3 % of a batch-1 RN50
/// forward, every buffer shrinking to each map and growing back).
fn take_buffer(len: usize) -> Vec<f32> {
    let reused = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        // The shortest long enough, else the one with the least to grow.
        let best = (pool.iter().enumerate())
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| (v.len() < len, v.len()))
            .map(|(i, _)| i);
        best.map(|i| pool.swap_remove(i))
    });
    match reused {
        Some(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            v
        }
        None => vec![0f32; len],
    }
}

/// A buffer of at least `len` floats, the first `len` zeros.
fn take_zeroed(len: usize) -> Vec<f32> {
    let mut v = take_buffer(len);
    v[..len].fill(0.0);
    v
}

fn give_buffer(v: Vec<f32>) {
    // A few buffers cover a forward: the block input, its branches and the output.
    const KEEP: usize = 8;
    if v.capacity() == 0 {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.push(v);
        if pool.len() > KEEP {
            if let Some(i) = pool
                .iter()
                .enumerate()
                .min_by_key(|(_, v)| v.capacity())
                .map(|(i, _)| i)
            {
                pool.swap_remove(i);
            }
        }
    });
}

/// A batch of feature maps, `(N, H, W, C)` row-major, at the start of its buffer (which may
/// hold more, see [`take_buffer`]). The buffer returns to a per-thread pool when dropped.
#[derive(Debug)]
pub struct Nhwc {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    buf: Vec<f32>,
}

impl Drop for Nhwc {
    fn drop(&mut self) {
        give_buffer(std::mem::take(&mut self.buf));
    }
}

impl Clone for Nhwc {
    fn clone(&self) -> Self {
        let mut buf = take_buffer(self.len());
        buf[..self.len()].copy_from_slice(self.data());
        Nhwc { buf, ..*self }
    }
}

impl PartialEq for Nhwc {
    fn eq(&self, other: &Self) -> bool {
        (self.n, self.h, self.w, self.c) == (other.n, other.h, other.w, other.c)
            && self.data() == other.data()
    }
}

impl Nhwc {
    fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }

    /// The maps' `N·H·W·C` values.
    pub fn data(&self) -> &[f32] {
        &self.buf[..self.len()]
    }

    fn data_mut(&mut self) -> &mut [f32] {
        let len = self.len();
        &mut self.buf[..len]
    }

    /// Moves the values out (to build a tensor); the map is left empty.
    pub fn into_data(mut self) -> Vec<f32> {
        let mut data = std::mem::take(&mut self.buf);
        data.truncate(self.len());
        data
    }

    /// From an `(N, C, H, W)` buffer, as image tensors come.
    pub fn from_nchw(data: &[f32], n: usize, c: usize, h: usize, w: usize) -> Self {
        let mut out = take_buffer(n * h * w * c);
        out[..n * h * w * c]
            .par_chunks_mut(h * w * c)
            .enumerate()
            .for_each(|(i, img)| {
                let src = &data[i * c * h * w..(i + 1) * c * h * w];
                for (p, px) in img.chunks_mut(c).enumerate() {
                    for (ch, v) in px.iter_mut().enumerate() {
                        *v = src[ch * h * w + p];
                    }
                }
            });
        Nhwc {
            n,
            h,
            w,
            c,
            buf: out,
        }
    }
}

/// Patch-matrix chunks are kept under this many floats (16 MiB).
const PATCH_BUDGET: usize = 4 << 20;

/// Per-channel epilogue after a convolution.
#[derive(Debug, Clone)]
pub enum Epilogue {
    /// `y = x + bias` (a batch norm folded into the weights).
    Bias(Vec<f32>),
    /// `y = (x - mean) / sqrt(var + eps) * gamma + beta`, literally (unfolded batch norm).
    BatchNorm {
        mean: Vec<f32>,
        var: Vec<f32>,
        gamma: Vec<f32>,
        beta: Vec<f32>,
        eps: f32,
    },
}

/// The geometry of a square convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub c_out: usize,
    pub c_in: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// A 2-D convolution without bias, followed by an [`Epilogue`] and optionally ReLU.
#[derive(Debug, Clone)]
pub struct Conv2d {
    /// `(k·k·C_in, C_out)`, rows ordered (ky, kx, c_in) to match NHWC patches.
    weight: Vec<f32>,
    /// The weight rounded to bfloat16 and packed, at [`Precision::Bf16`].
    packed: Option<Arc<PackedWeight>>,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    epilogue: Epilogue,
    relu: bool,
}

impl Conv2d {
    /// From a PyTorch weight `(C_out, C_in, k, k)`.
    pub fn new(torch_weight: &[f32], shape: ConvShape, epilogue: Epilogue, relu: bool) -> Self {
        let ConvShape {
            c_out,
            c_in,
            kernel,
            stride,
            padding,
        } = shape;
        let kk = kernel * kernel;
        let mut weight = vec![0f32; kk * c_in * c_out];
        for co in 0..c_out {
            for ci in 0..c_in {
                for t in 0..kk {
                    weight[(t * c_in + ci) * c_out + co] = torch_weight[(co * c_in + ci) * kk + t];
                }
            }
        }
        Conv2d {
            weight,
            packed: None,
            c_in,
            c_out,
            kernel,
            stride,
            padding,
            epilogue,
            relu,
        }
    }

    /// This convolution multiplying at `precision`: bfloat16 packs the weight once, here.
    pub fn at(mut self, precision: Precision) -> Self {
        self.packed = match precision {
            Precision::F32 => None,
            Precision::Bf16 => {
                let (n, k) = (self.c_out, self.weight.len() / self.c_out.max(1));
                // The packing takes `(C_out, k·k·C_in)` rows.
                let mut rows = vec![0f32; n * k];
                for (i, row) in self.weight.chunks(n).enumerate() {
                    for (o, &w) in row.iter().enumerate() {
                        rows[o * k + i] = w;
                    }
                }
                Some(Arc::new(PackedWeight::pack(&rows, n, k)))
            }
        };
        self
    }

    pub fn c_out(&self) -> usize {
        self.c_out
    }

    /// `out (m × C_out) = patches (m × depth) · weight`, at the layer's precision.
    fn product(&self, patches: &[f32], m: usize, depth: usize, out: &mut [f32]) {
        match &self.packed {
            Some(packed) => packed.abt_into(patches, m, out),
            None => crate::kernels::matmul::gemm(
                patches,
                false,
                &self.weight,
                false,
                out,
                m,
                depth,
                self.c_out,
                false,
            ),
        }
    }

    pub fn forward(&self, x: &Nhwc) -> Nhwc {
        assert_eq!(x.c, self.c_in, "conv: channel mismatch");
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let ho = (x.h + 2 * p - k) / s + 1;
        let wo = (x.w + 2 * p - k) / s + 1;
        let rows = x.n * ho * wo;
        let depth = k * k * x.c;
        let mut out = take_buffer(rows * self.c_out);
        if k == 1 && s == 1 && p == 0 {
            self.product(x.data(), rows, depth, &mut out);
        } else {
            let chunk = (PATCH_BUDGET / depth).clamp(1, rows);
            let mut patches = take_buffer(chunk * depth);
            for start in (0..rows).step_by(chunk) {
                let m = chunk.min(rows - start);
                self.gather(x, ho, wo, start, &mut patches[..m * depth]);
                self.product(&patches, m, depth, &mut out[start * self.c_out..]);
            }
            give_buffer(patches);
        }
        self.finish(&mut out[..rows * self.c_out]);
        Nhwc {
            n: x.n,
            h: ho,
            w: wo,
            c: self.c_out,
            buf: out,
        }
    }

    /// Fills one patch row per output pixel `start..start + rows`, zeros where the window
    /// leaves the image (zero padding).
    fn gather(&self, x: &Nhwc, ho: usize, wo: usize, start: usize, patches: &mut [f32]) {
        let (k, s, p, c) = (self.kernel, self.stride, self.padding as isize, x.c);
        patches
            .par_chunks_mut(k * k * c)
            .enumerate()
            .for_each(|(i, row)| {
                let r = start + i;
                let (img, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
                for ky in 0..k {
                    let iy = (oy * s + ky) as isize - p;
                    for kx in 0..k {
                        let ix = (ox * s + kx) as isize - p;
                        let dst = &mut row[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                        if iy < 0 || ix < 0 || iy >= x.h as isize || ix >= x.w as isize {
                            dst.fill(0.0);
                        } else {
                            let at = ((img * x.h + iy as usize) * x.w + ix as usize) * c;
                            dst.copy_from_slice(&x.data()[at..at + c]);
                        }
                    }
                }
            });
    }

    fn finish(&self, out: &mut [f32]) {
        let c = self.c_out;
        let relu = self.relu;
        let rows_per_task = (16384 / c).max(1);
        out.par_chunks_mut(c * rows_per_task).for_each(|chunk| {
            for px in chunk.chunks_mut(c) {
                match &self.epilogue {
                    Epilogue::Bias(b) => px.iter_mut().zip(b).for_each(|(v, b)| *v += b),
                    Epilogue::BatchNorm {
                        mean,
                        var,
                        gamma,
                        beta,
                        eps,
                    } => {
                        for (i, v) in px.iter_mut().enumerate() {
                            *v = (*v - mean[i]) / (var[i] + eps).sqrt() * gamma[i] + beta[i];
                        }
                    }
                }
                if relu {
                    px.iter_mut().for_each(|v| *v = v.max(0.0));
                }
            }
        });
    }
}

/// `AvgPool2d(k)` (kernel = stride = k, no padding, output size rounded down).
pub fn avg_pool(x: &Nhwc, k: usize) -> Nhwc {
    let (ho, wo, c) = (x.h / k, x.w / k, x.c);
    let len = x.n * ho * wo * c;
    let mut out = take_zeroed(len);
    let scale = 1.0 / (k * k) as f32;
    out[..len]
        .par_chunks_mut(wo * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let (img, oy) = (row / ho, row % ho);
            for ox in 0..wo {
                let d = &mut dst[ox * c..(ox + 1) * c];
                for ky in 0..k {
                    for kx in 0..k {
                        let at = ((img * x.h + oy * k + ky) * x.w + ox * k + kx) * c;
                        d.iter_mut()
                            .zip(&x.data()[at..at + c])
                            .for_each(|(d, v)| *d += v);
                    }
                }
                d.iter_mut().for_each(|v| *v *= scale);
            }
        });
    Nhwc {
        n: x.n,
        h: ho,
        w: wo,
        c,
        buf: out,
    }
}

/// `relu(a + b)` in place into `a`.
pub fn add_relu(a: &mut Nhwc, b: &Nhwc) {
    assert_eq!(
        (a.n, a.h, a.w, a.c),
        (b.n, b.h, b.w, b.c),
        "residual shape mismatch"
    );
    a.data_mut()
        .par_chunks_mut(16384)
        .zip(b.data().par_chunks(16384))
        .for_each(|(a, b)| {
            a.iter_mut()
                .zip(b)
                .for_each(|(a, b)| *a = (*a + b).max(0.0));
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution in NCHW, the textbook definition, as the reference.
    #[allow(clippy::too_many_arguments)]
    fn direct(
        x: &[f32],
        w: &[f32],
        n: usize,
        c: usize,
        h: usize,
        wd: usize,
        co: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> Vec<f32> {
        let ho = (h + 2 * p - k) / s + 1;
        let wo = (wd + 2 * p - k) / s + 1;
        let mut out = vec![0f32; n * ho * wo * co]; // NHWC
        for b in 0..n {
            for oy in 0..ho {
                for ox in 0..wo {
                    for o in 0..co {
                        let mut acc = 0f32;
                        for ci in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s + ky) as isize - p as isize;
                                    let ix = (ox * s + kx) as isize - p as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < wd
                                    {
                                        acc += x
                                            [((b * c + ci) * h + iy as usize) * wd + ix as usize]
                                            * w[((o * c + ci) * k + ky) * k + kx];
                                    }
                                }
                            }
                        }
                        out[((b * ho + oy) * wo + ox) * co + o] = acc;
                    }
                }
            }
        }
        out
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) % 1000) as f32
                    / 500.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn im2col_gemm_matches_direct_convolution() {
        for &(n, c, h, w, co, k, s, p) in &[
            (2, 3, 9, 7, 5, 3, 2, 1),
            (1, 4, 6, 6, 3, 3, 1, 1),
            (3, 8, 5, 4, 6, 1, 1, 0),
        ] {
            let x = pseudo(n * c * h * w, 1);
            let wt = pseudo(co * c * k * k, 2);
            let shape = ConvShape {
                c_out: co,
                c_in: c,
                kernel: k,
                stride: s,
                padding: p,
            };
            let conv = Conv2d::new(&wt, shape, Epilogue::Bias(vec![0.0; co]), false);
            let ours = conv.forward(&Nhwc::from_nchw(&x, n, c, h, w));
            let want = direct(&x, &wt, n, c, h, w, co, k, s, p);
            let diff = ours
                .data()
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "({n},{c},{h},{w}) k{k} s{s}: {diff}");
        }
    }

    #[test]
    fn avg_pool_averages_windows() {
        let x = Nhwc {
            n: 1,
            h: 2,
            w: 4,
            c: 1,
            buf: vec![1., 2., 3., 4., 5., 6., 7., 8.],
        };
        assert_eq!(avg_pool(&x, 2).data(), [3.5, 5.5]);
    }
}
