//! Limited-memory BFGS (Nocedal & Wright, algorithm 7.4) with a backtracking Armijo line
//! search: the solver behind the linear probe, standing in for scikit-learn's
//! `LogisticRegression(solver="lbfgs")` (scipy's L-BFGS-B without bounds). The objective is
//! smooth and strictly convex, so a sufficient-decrease line search converges to the same
//! minimiser; the stopping rules follow scipy's: projected-gradient max-norm ≤ `gtol`, or a
//! relative decrease below `ftol`, or `max_iter` iterations.

/// Stopping rules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbfgsOptions {
    pub memory: usize,
    pub max_iter: usize,
    /// scikit-learn passes its `tol` (1e-4) as scipy's `gtol`.
    pub gtol: f64,
    /// scipy's default `ftol`, `2.22e-9`.
    pub ftol: f64,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        LbfgsOptions {
            memory: 10,
            max_iter: 1000,
            gtol: 1e-4,
            ftol: 2.220446049250313e-9,
        }
    }
}

/// Minimises `f` from `x` (updated in place); `f(x, grad)` returns the value and writes the
/// gradient. Returns the final value and the number of iterations.
pub fn minimize(
    x: &mut [f64],
    opts: &LbfgsOptions,
    f: &mut dyn FnMut(&[f64], &mut [f64]) -> f64,
) -> (f64, usize) {
    let n = x.len();
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let mut g = vec![0f64; n];
    let mut fx = f(x, &mut g);
    let mut s_hist: Vec<Vec<f64>> = Vec::new();
    let mut y_hist: Vec<Vec<f64>> = Vec::new();
    let mut rho: Vec<f64> = Vec::new();
    let mut x_new = vec![0f64; n];
    let mut g_new = vec![0f64; n];
    for iter in 0..opts.max_iter {
        if g.iter().fold(0f64, |m, v| m.max(v.abs())) <= opts.gtol {
            return (fx, iter);
        }
        // Two-loop recursion: d = −H g.
        let mut q = g.clone();
        let mut a = vec![0f64; s_hist.len()];
        for i in (0..s_hist.len()).rev() {
            a[i] = rho[i] * dot(&s_hist[i], &q);
            q.iter_mut()
                .zip(&y_hist[i])
                .for_each(|(q, y)| *q -= a[i] * y);
        }
        let gamma = match (s_hist.last(), y_hist.last()) {
            (Some(s), Some(y)) => dot(s, y) / dot(y, y),
            // First step: a unit-length move, as scipy's initial step.
            _ => 1.0 / dot(&g, &g).sqrt().max(1e-300),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for i in 0..s_hist.len() {
            let b = rho[i] * dot(&y_hist[i], &q);
            q.iter_mut()
                .zip(&s_hist[i])
                .for_each(|(q, s)| *q += (a[i] - b) * s);
        }
        let d: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut slope = dot(&g, &d);
        let d = if slope >= 0.0 {
            // Not a descent direction (curvature lost to rounding): restart along −g.
            s_hist.clear();
            y_hist.clear();
            rho.clear();
            slope = -dot(&g, &g);
            g.iter().map(|v| -v).collect()
        } else {
            d
        };
        // Backtracking Armijo line search.
        let mut step = 1.0;
        let mut f_new;
        let mut tries = 0;
        loop {
            x_new
                .iter_mut()
                .zip(x.iter())
                .zip(&d)
                .for_each(|((xn, &xo), &di)| *xn = xo + step * di);
            f_new = f(&x_new, &mut g_new);
            if f_new <= fx + 1e-4 * step * slope || tries >= 40 {
                break;
            }
            step *= 0.5;
            tries += 1;
        }
        if tries >= 40 && f_new > fx {
            return (fx, iter);
        }
        let s: Vec<f64> = x_new.iter().zip(x.iter()).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        let decrease = (fx - f_new) / fx.abs().max(f_new.abs()).max(1.0);
        x.copy_from_slice(&x_new);
        g.copy_from_slice(&g_new);
        fx = f_new;
        if sy > 1e-10 * dot(&y, &y) {
            if s_hist.len() == opts.memory {
                s_hist.remove(0);
                y_hist.remove(0);
                rho.remove(0);
            }
            s_hist.push(s);
            y_hist.push(y);
            rho.push(1.0 / sy);
        }
        if decrease <= opts.ftol {
            return (fx, iter + 1);
        }
    }
    (fx, opts.max_iter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimises_rosenbrock() {
        let mut x = vec![-1.2, 1.0];
        let opts = LbfgsOptions {
            gtol: 1e-8,
            ftol: 0.0,
            ..Default::default()
        };
        let (fx, _) = minimize(&mut x, &opts, &mut |x, g| {
            let (a, b) = (x[0], x[1]);
            g[0] = -2.0 * (1.0 - a) - 400.0 * a * (b - a * a);
            g[1] = 200.0 * (b - a * a);
            (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2)
        });
        assert!(
            fx < 1e-10 && (x[0] - 1.0).abs() < 1e-4 && (x[1] - 1.0).abs() < 1e-4,
            "{x:?} {fx}"
        );
    }
}
