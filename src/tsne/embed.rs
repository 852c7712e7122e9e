//! The 2-D t-SNE map of a feature matrix, through the `bhtsne` crate's Barnes-Hut t-SNE
//! (van der Maaten 2014: sparse input affinities over the 3·perplexity nearest neighbours, a
//! Barnes-Hut tree for the repulsion, early exaggeration 12 for 250 of 1000 iterations,
//! momentum 0.5 then 0.8, learning rate `max(n / 12 / 4, 50)` as scikit-learn's "auto").
//!
//! `bhtsne` draws its random initialisation and its vantage-point tree from an unseeded
//! generator, so two of its runs differ. Both draws are replaced here, and nothing else of the
//! algorithm: the nearest neighbours come from an exact search of our own (brute force, ties by
//! index, handed over through `barnes_hut_with_neighbors`), and the initial map is drawn from
//! our seeded generator with bhtsne's (and scikit-learn's `init="random"`) distribution,
//! N(0, 10⁻⁴·I). The fit itself runs on a pool of one thread: bhtsne sums the affinities and
//! recentres the map every iteration with rayon reductions, whose grouping of float additions
//! follows work stealing when several threads run, and t-SNE amplifies such last-bit
//! differences into another map. On one thread the grouping is fixed, so one seed gives one map
//! on any machine; the two maps of [`super::adapter_tsne`] run side by side instead.
//!
//! Features are L2-normalised first; euclidean distance between unit vectors is
//! `√(2 − 2 cos)`, so the neighbours are those of CLIP's cosine similarity.

use bhtsne::{tSNE, Neighbor};
use serde::Serialize;

use super::metrics::{neighbours, Metric};
use super::TsneError;
use crate::methods::linalg::Matrix;
use crate::rng::SplitMix64;

/// Salts the seed of the initial map, so that it is not the stream another user of the same
/// seed draws.
const INIT_SALT: u64 = 0x7473_6e65_5f69_6e69;

/// The t-SNE settings (defaults: the paper's figure as scikit-learn and bhtsne draw it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TsneOptions {
    /// The effective number of neighbours each point's Gaussian covers (30).
    pub perplexity: f32,
    /// Barnes-Hut accuracy: larger is faster and coarser; scikit-learn's `angle` (0.5).
    pub theta: f32,
    /// Gradient-descent iterations (1000).
    pub epochs: usize,
    /// Seeds the initial map.
    pub seed: u64,
}

impl Default for TsneOptions {
    fn default() -> Self {
        TsneOptions {
            perplexity: 30.0,
            theta: 0.5,
            epochs: 1000,
            seed: 1,
        }
    }
}

impl TsneOptions {
    /// The neighbours each point's affinities are computed over, as bhtsne picks them.
    fn neighbours(&self) -> usize {
        (3.0 * self.perplexity) as usize
    }

    /// Refuses settings bhtsne would panic on or that make no map, before any work.
    pub fn check(&self, points: usize) -> Result<(), TsneError> {
        if !(self.perplexity.is_finite() && self.perplexity >= 1.0) {
            return Err(TsneError::Perplexity(self.perplexity));
        }
        if !(self.theta.is_finite() && self.theta > 0.0) {
            return Err(TsneError::Theta(self.theta));
        }
        if self.epochs == 0 {
            return Err(TsneError::NoIterations);
        }
        let neighbours = self.neighbours();
        if points < neighbours + 1 {
            let perplexity = self.perplexity;
            return Err(TsneError::PerplexityTooLarge {
                perplexity,
                neighbours,
                points,
            });
        }
        Ok(())
    }
}

/// The t-SNE map of `features` (N × D, any scale: rows are L2-normalised first): N × 2.
pub fn embed(features: &Matrix, opts: &TsneOptions) -> Result<Matrix, TsneError> {
    let n = features.rows;
    opts.check(n)?;
    if let Some(i) = features.data.iter().position(|v| !v.is_finite()) {
        return Err(TsneError::NonFinite {
            row: i / features.cols.max(1),
        });
    }
    if let Some(row) = (0..n).find(|&r| features.row(r).iter().all(|&v| v == 0.0)) {
        return Err(TsneError::ZeroRow { row });
    }
    let knn: Vec<Vec<Neighbor<f32>>> = neighbours(features, Metric::Cosine, opts.neighbours())
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|(index, cosine)| Neighbor {
                    index,
                    // Unit vectors: ‖a − b‖² = 2 (1 − cos); rounding can leave it a hair below 0.
                    distance: (2.0 * cosine).max(0.0).sqrt(),
                })
                .collect()
        })
        .collect();
    let mut rng = SplitMix64::salted(opts.seed, INIT_SALT);
    let init: Vec<f32> = (0..2 * n).map(|_| 1e-4 * rng.normal()).collect();
    // bhtsne only counts the samples when it is given their neighbours.
    let samples: Vec<usize> = (0..n).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(TsneError::ThreadPool)?;
    let map = pool.install(|| {
        let mut tsne: tSNE<f32, usize> = tSNE::new(&samples);
        tsne.perplexity(opts.perplexity)
            .epochs(opts.epochs)
            .initial_embedding(init)
            .barnes_hut_with_neighbors(opts.theta, &knn);
        tsne.embedding()
    });
    if let Some(i) = map.iter().position(|v| !v.is_finite()) {
        return Err(TsneError::Diverged { row: i / 2 });
    }
    Ok(Matrix {
        rows: n,
        cols: 2,
        data: map,
    })
}
