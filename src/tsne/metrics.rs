//! Numbers that say what a scatter plot of classes shows, computed the way scikit-learn
//! computes them, so that a claim about a picture can be tested:
//!
//! - leave-one-out k-NN accuracy: each point is classified by the majority class of its k
//!   nearest other points; a vote tied between classes goes to the lower class index (as
//!   `KNeighborsClassifier` with uniform weights decides it), neighbours at equal distance are
//!   taken in index order;
//! - the silhouette score (`sklearn.metrics.silhouette_score`): per point
//!   `(b − a) / max(a, b)` with `a` its mean distance to its own class and `b` the smallest mean
//!   distance to another class, 0 for a point alone in its class, averaged over the points;
//! - trustworthiness (`sklearn.manifold.trustworthiness`, Venna & Kaski 2001): how far, in the
//!   input space, the k nearest neighbours of each point in the map are;
//! - k-NN preservation: the share of each point's k nearest input neighbours that are also among
//!   its k nearest neighbours in the map.
//!
//! Distances are computed one block of rows at a time (a GEMM per block for the feature space),
//! so memory stays at a block × N buffer whatever the number of points.

use rayon::prelude::*;
use serde::Serialize;

use super::TsneError;
use crate::methods::linalg::{gemm, Matrix};

/// The neighbours a k-NN vote counts (the paper-style figure's number).
pub const KNN_K: usize = 5;

/// Rows of the distance matrix computed at once.
const BLOCK: usize = 128;

/// How distances between points are measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// `1 − cos(a, b)`: CLIP's similarity, for feature spaces.
    Cosine,
    /// `‖a − b‖`, for the 2-D map.
    Euclidean,
}

/// How well the classes are separated in one space.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Separation {
    /// Leave-one-out [`KNN_K`]-NN accuracy, in `[0, 1]`.
    pub knn_accuracy: f32,
    /// Mean silhouette, in `[−1, 1]`.
    pub silhouette: f32,
}

/// Points with a distance between any two.
struct Space<'a> {
    points: &'a Matrix,
    metric: Metric,
    /// Unit rows for cosine (computed once).
    unit: Option<Matrix>,
}

impl<'a> Space<'a> {
    fn new(points: &'a Matrix, metric: Metric) -> Self {
        let unit = (metric == Metric::Cosine).then(|| points.normalized());
        Space {
            points,
            metric,
            unit,
        }
    }

    fn len(&self) -> usize {
        self.points.rows
    }

    /// Calls `f(i, distances from i to every point)` for every row `i`, in parallel over
    /// blocks of rows, and returns the results in row order. The distance of a point to itself
    /// is `+∞`, so that it is never its own neighbour.
    fn map_rows<R: Send>(&self, f: impl Fn(usize, &[f32]) -> R + Sync) -> Vec<R> {
        let n = self.len();
        let starts: Vec<usize> = (0..n).step_by(BLOCK).collect();
        let blocks: Vec<Vec<R>> = starts
            .par_iter()
            .map(|&start| {
                let end = (start + BLOCK).min(n);
                let rows = self.block(start, end);
                (start..end)
                    .zip(rows.chunks(n.max(1)))
                    .map(|(i, row)| f(i, row))
                    .collect()
            })
            .collect();
        blocks.into_iter().flatten().collect()
    }

    /// Distances of rows `start..end` to every point, `(end − start) × n`.
    fn block(&self, start: usize, end: usize) -> Vec<f32> {
        let (n, d) = (self.len(), self.points.cols);
        let m = end - start;
        let mut out = vec![0f32; m * n];
        match (&self.unit, self.metric) {
            (Some(u), _) => {
                gemm(
                    &u.data[start * d..end * d],
                    false,
                    &u.data,
                    true,
                    &mut out,
                    m,
                    d,
                    n,
                    false,
                );
                out.iter_mut().for_each(|v| *v = 1.0 - *v);
            }
            (None, _) => {
                // The map is 2-D: exact differences cost less than a GEMM and keep close
                // points' order exact.
                for (r, i) in (start..end).enumerate() {
                    let a = self.points.row(i);
                    for (j, o) in out[r * n..(r + 1) * n].iter_mut().enumerate() {
                        let b = self.points.row(j);
                        *o = a
                            .iter()
                            .zip(b)
                            .map(|(x, y)| (x - y) * (x - y))
                            .sum::<f32>()
                            .sqrt();
                    }
                }
            }
        }
        for (r, i) in (start..end).enumerate() {
            out[r * n + i] = f32::INFINITY;
        }
        out
    }
}

/// The `k` nearest points of a distance row (closest first, ties by index).
pub(crate) fn nearest(row: &[f32], k: usize) -> Vec<usize> {
    let by = |a: &usize, b: &usize| row[*a].total_cmp(&row[*b]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..row.len()).collect();
    if k < idx.len() {
        idx.select_nth_unstable_by(k, by);
        idx.truncate(k);
    }
    idx.sort_unstable_by(by);
    idx
}

fn check_labels(points: &Matrix, labels: &[usize]) -> Result<usize, TsneError> {
    if labels.len() != points.rows {
        return Err(TsneError::Counts {
            first: labels.len(),
            first_what: "labels",
            second: points.rows,
            second_what: "points",
        });
    }
    let mut present: Vec<usize> = labels.to_vec();
    present.sort_unstable();
    present.dedup();
    if present.len() < 2 || present.len() >= points.rows {
        return Err(TsneError::Classes {
            classes: present.len(),
            points: points.rows,
        });
    }
    Ok(labels.iter().max().map_or(0, |m| m + 1))
}

/// Leave-one-out k-NN accuracy and silhouette of `labels` among `points` under `metric`, from
/// one pass over the distances.
pub fn separation(
    points: &Matrix,
    labels: &[usize],
    metric: Metric,
    k: usize,
) -> Result<Separation, TsneError> {
    let classes = check_labels(points, labels)?;
    let n = points.rows;
    if k == 0 || k >= n {
        return Err(TsneError::Neighbours { k, points: n });
    }
    let mut sizes = vec![0usize; classes];
    labels.iter().for_each(|&l| sizes[l] += 1);
    let space = Space::new(points, metric);
    let per_point: Vec<(bool, f64)> = space.map_rows(|i, row| {
        let mut votes = vec![0usize; classes];
        nearest(row, k).iter().for_each(|&j| votes[labels[j]] += 1);
        // The first maximum: ties go to the lower class index.
        let best = votes
            .iter()
            .enumerate()
            .fold((0, 0), |acc, (c, &v)| if v > acc.1 { (c, v) } else { acc })
            .0;
        let own = labels[i];
        if sizes[own] < 2 {
            return (best == own, 0.0);
        }
        let mut sums = vec![0f64; classes];
        for (j, &dist) in row.iter().enumerate() {
            if j != i {
                sums[labels[j]] += f64::from(dist);
            }
        }
        let a = sums[own] / (sizes[own] - 1) as f64;
        let b = (0..classes)
            .filter(|&c| c != own && sizes[c] > 0)
            .map(|c| sums[c] / sizes[c] as f64)
            .fold(f64::INFINITY, f64::min);
        let s = if a.max(b) > 0.0 {
            (b - a) / a.max(b)
        } else {
            0.0
        };
        (best == own, s)
    });
    let correct = per_point.iter().filter(|p| p.0).count();
    let silhouette = per_point.iter().map(|p| p.1).sum::<f64>() / n as f64;
    Ok(Separation {
        knn_accuracy: correct as f32 / n as f32,
        silhouette: silhouette as f32,
    })
}

fn check_pair(input: &Matrix, map: &Matrix, k: usize) -> Result<(), TsneError> {
    if input.rows != map.rows {
        return Err(TsneError::Counts {
            first: input.rows,
            first_what: "input points",
            second: map.rows,
            second_what: "mapped points",
        });
    }
    // scikit-learn's bound: the normalisation of trustworthiness needs 2n − 3k − 1 > 0 with
    // room to spare.
    if k == 0 || 2 * k >= input.rows {
        return Err(TsneError::Neighbours {
            k,
            points: input.rows,
        });
    }
    Ok(())
}

/// Trustworthiness of `map` (2-D, euclidean) for `input` under `input_metric`, with `k`
/// neighbours (`k < n / 2`): 1 when every map neighbour is an input neighbour.
pub fn trustworthiness(
    input: &Matrix,
    input_metric: Metric,
    map: &Matrix,
    k: usize,
) -> Result<f32, TsneError> {
    check_pair(input, map, k)?;
    let n = input.rows;
    let map_nn = Space::new(map, Metric::Euclidean).map_rows(|_, row| nearest(row, k));
    let penalties: Vec<f64> = Space::new(input, input_metric).map_rows(|i, row| {
        map_nn[i]
            .iter()
            .map(|&j| {
                // 1-based rank of j among i's input neighbours (ties by index, as a stable sort).
                let rank = 1 + row
                    .iter()
                    .enumerate()
                    .filter(|&(m, &d)| d < row[j] || (d == row[j] && m < j))
                    .count();
                rank.saturating_sub(k) as f64
            })
            .sum()
    });
    let (n, k) = (n as f64, k as f64);
    let t = 1.0 - penalties.iter().sum::<f64>() * 2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0));
    Ok(t as f32)
}

/// The mean share of each point's `k` nearest input neighbours (under `input_metric`) that are
/// among its `k` nearest neighbours in `map` (euclidean).
pub fn knn_preservation(
    input: &Matrix,
    input_metric: Metric,
    map: &Matrix,
    k: usize,
) -> Result<f32, TsneError> {
    check_pair(input, map, k)?;
    let map_nn = Space::new(map, Metric::Euclidean).map_rows(|_, row| nearest(row, k));
    let kept: Vec<usize> = Space::new(input, input_metric).map_rows(|i, row| {
        nearest(row, k)
            .iter()
            .filter(|j| map_nn[i].contains(j))
            .count()
    });
    Ok(kept.iter().sum::<usize>() as f32 / (input.rows * k) as f32)
}

/// The `k` nearest neighbours of every point under `metric` and their distances, for the
/// t-SNE affinities (closest first, ties by index).
pub(crate) fn neighbours(points: &Matrix, metric: Metric, k: usize) -> Vec<Vec<(usize, f32)>> {
    Space::new(points, metric)
        .map_rows(|_, row| nearest(row, k).into_iter().map(|j| (j, row[j])).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: &[[f32; 2]]) -> Matrix {
        Matrix {
            rows: rows.len(),
            cols: 2,
            data: rows.iter().flatten().copied().collect(),
        }
    }

    #[test]
    fn nearest_orders_by_distance_then_index() {
        let row = [3.0, 1.0, f32::INFINITY, 1.0, 0.5];
        assert_eq!(nearest(&row, 3), vec![4, 1, 3]);
        assert_eq!(nearest(&row, 10), vec![4, 1, 3, 0, 2]);
    }

    #[test]
    fn silhouette_of_a_hand_computed_case() {
        // Class 0 at x = 0 and 1, class 1 at x = 4 and 6 (on a line).
        let p = m(&[[0.0, 0.0], [1.0, 0.0], [4.0, 0.0], [6.0, 0.0]]);
        let s = separation(&p, &[0, 0, 1, 1], Metric::Euclidean, 1).unwrap();
        // a, b per point: (1, 5), (1, 4), (2, 3.5), (2, 5.5).
        let want = ((4.0 / 5.0) + (3.0 / 4.0) + (1.5 / 3.5) + (3.5 / 5.5)) / 4.0;
        assert!((s.silhouette - want as f32).abs() < 1e-6, "{s:?}");
        assert_eq!(s.knn_accuracy, 1.0);
    }

    #[test]
    fn knn_ties_go_to_the_lower_class() {
        // Point 0 (class 1) has one neighbour of each class at equal distance.
        let p = m(&[[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [9.0, 9.0]]);
        let s = separation(&p, &[1, 0, 1, 0], Metric::Euclidean, 2).unwrap();
        // Point 0: neighbours 1 (class 0) and 2 (class 1): a tie, class 0 wins: wrong.
        assert!(s.knn_accuracy < 1.0);
    }

    #[test]
    fn trustworthiness_is_one_for_an_isometry_and_lower_for_a_shuffle() {
        let p = m(&[
            [0.0, 0.0],
            [1.0, 0.1],
            [2.0, 0.3],
            [3.0, 0.2],
            [4.0, 0.9],
            [5.0, 0.4],
            [6.0, 0.0],
            [7.0, 0.5],
        ]);
        let moved = m(&[
            [10.0, 0.0],
            [11.0, 0.1],
            [12.0, 0.3],
            [13.0, 0.2],
            [14.0, 0.9],
            [15.0, 0.4],
            [16.0, 0.0],
            [17.0, 0.5],
        ]);
        assert_eq!(
            trustworthiness(&p, Metric::Euclidean, &moved, 2).unwrap(),
            1.0
        );
        let mut shuffled = moved.clone();
        shuffled.data.swap(0, 12);
        shuffled.data.swap(1, 13);
        assert!(trustworthiness(&p, Metric::Euclidean, &shuffled, 2).unwrap() < 1.0);
        assert_eq!(
            knn_preservation(&p, Metric::Euclidean, &moved, 2).unwrap(),
            1.0
        );
    }

    #[test]
    fn bad_shapes_are_errors() {
        let p = m(&[[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]]);
        assert!(matches!(
            separation(&p, &[0, 1], Metric::Euclidean, 1),
            Err(TsneError::Counts { .. })
        ));
        assert!(matches!(
            separation(&p, &[0, 0, 0], Metric::Euclidean, 1),
            Err(TsneError::Classes { .. })
        ));
        assert!(matches!(
            trustworthiness(&p, Metric::Euclidean, &p, 2),
            Err(TsneError::Neighbours { .. })
        ));
    }
}
