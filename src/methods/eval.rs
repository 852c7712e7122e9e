//! Accuracy and its summary over seeds, as the reference scripts report them.

use super::linalg::{argmax_rows, Matrix};

/// Top-1 accuracy in percent of `logits` (N×K) against `labels`; NaN for an empty set (e.g.
/// ImageNet's missing validation split), so an absent number is never mistaken for 0 %.
pub fn accuracy(logits: &Matrix, labels: &[usize]) -> f32 {
    if labels.is_empty() {
        return f32::NAN;
    }
    let pred = argmax_rows(&logits.data, logits.cols);
    let hits = pred.iter().zip(labels).filter(|(p, y)| p == y).count();
    100.0 * hits as f32 / labels.len() as f32
}

/// Mean and population standard deviation (`np.std`, ddof 0, as CoOp's `parse_test_res.py`).
pub fn mean_std(values: &[f32]) -> (f32, f32) {
    if values.is_empty() {
        return (f32::NAN, f32::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean as f32, var.sqrt() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_counts_argmax_hits() {
        let logits = Matrix::from_vec(3, 2, vec![1., 0., 0., 1., 2., 3.]).unwrap();
        assert!((accuracy(&logits, &[0, 1, 0]) - 200.0 / 3.0).abs() < 1e-4);
        assert!(accuracy(&Matrix::zeros(0, 2), &[]).is_nan());
    }

    #[test]
    fn mean_std_is_population() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert!((m - 2.0).abs() < 1e-6 && (s - (2.0f32 / 3.0).sqrt()).abs() < 1e-6);
    }
}
