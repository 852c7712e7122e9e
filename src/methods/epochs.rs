//! The epoch loop every trained head shares: the order of the samples, how an epoch is cut into
//! mini-batches (each reference's own rule, [`Batching`]), the mean batch loss, the divergence
//! check, the progress report and the choice of the best epoch. What a step does (forward,
//! backward, the optimiser) stays in the method's file.

use super::{MethodError, Progress};
use crate::kernels::pool::on_pool;

/// CoOp's epochs by shot count (`configs/trainers/CoOp/*.yaml`), which CLIP-Adapter's Dassl
/// trainer uses too.
pub fn epochs_for_shots(shots: usize) -> usize {
    match shots {
        0 | 1 => 50,
        2..=4 => 100,
        _ => 200,
    }
}

/// How an epoch's shuffled sample order is cut into mini-batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// Dassl's loader (CoOp, CLIP-Adapter): consecutive batches of `size`; the last incomplete
    /// one is dropped when the set holds a full batch (`drop_last` for the training loader),
    /// kept when it is all there is.
    DropLast { size: usize },
    /// A PyTorch `DataLoader` without `drop_last` (Tip-Adapter-F, APE-T): every batch, the last
    /// one possibly smaller.
    KeepLast { size: usize },
    /// CLAP's trainer: `count` batches of `size` from a pool larger than the image set (every
    /// augmented view), as many as its image loader has.
    Count { size: usize, count: usize },
    /// One step on the whole set per epoch (LP++, ProLIP).
    Full,
}

impl Batching {
    /// The batches of one epoch, as ranges of positions in the epoch's order of `n` samples.
    fn batches(self, n: usize) -> Vec<std::ops::Range<usize>> {
        let chunks = |size: usize| (0..n).step_by(size).map(move |s| s..(s + size).min(n));
        match self {
            Batching::DropLast { size } => chunks(size)
                .filter(|r| r.len() == size || n < size)
                .collect(),
            Batching::KeepLast { size } => chunks(size).collect(),
            Batching::Count { size, count } => chunks(size).take(count).collect(),
            Batching::Full => std::iter::once(0..n).collect(),
        }
    }

    fn size(self) -> Option<usize> {
        match self {
            Batching::DropLast { size }
            | Batching::KeepLast { size }
            | Batching::Count { size, .. } => Some(size),
            Batching::Full => None,
        }
    }
}

/// One training step: `(state, epoch, batch indices)` to the batch loss. `Send`, because an
/// epoch's steps run on a worker of rayon's pool (see [`EpochLoop::run`]).
pub type Step<'a, S, E> = dyn FnMut(&mut S, usize, &[usize]) -> Result<f32, E> + Send + 'a;

/// A training run's epochs and batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochLoop {
    pub epochs: usize,
    pub batching: Batching,
}

impl EpochLoop {
    /// Runs the epochs over `n` samples, training `state`. Each epoch takes its order from
    /// `order(epoch)` (not called for [`Batching::Full`], whose one batch is every sample in
    /// index order), calls `step(state, epoch, batch)` with the sample indices of each batch,
    /// which returns the batch loss (or the step's error, which stops training), then
    /// `end(state, epoch)`. Returns the mean batch loss of every epoch; a loss that is not
    /// finite stops training with [`MethodError::Diverged`].
    ///
    /// Each epoch's steps run on a worker of rayon's pool ([`on_pool`]; the caller's thread
    /// waits, and keeps `order`, `end` and `progress`, which need not be `Send`): a batch-32
    /// step of CLIP-Adapter makes seven products in about two milliseconds, and their hand-offs
    /// from outside the pool were a quarter of its time (AMD EPYC Zen 4, 2 cores).
    pub fn run<S: ?Sized + Send, E: From<MethodError> + Send>(
        &self,
        state: &mut S,
        n: usize,
        order: &mut dyn FnMut(usize) -> Vec<usize>,
        step: &mut Step<S, E>,
        end: &mut dyn FnMut(&mut S, usize),
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Vec<f32>, E> {
        if self.batching.size() == Some(0) {
            return Err(MethodError::option("batch-size", 0, "must be at least 1").into());
        }
        let mut losses = Vec::with_capacity(self.epochs);
        for epoch in 0..self.epochs {
            let idx = match self.batching {
                Batching::Full => (0..n).collect(),
                _ => order(epoch),
            };
            let batches = self.batching.batches(idx.len());
            let sum = on_pool(|| {
                let mut sum = 0f64;
                for range in &batches {
                    sum += step(state, epoch, &idx[range.clone()])? as f64;
                }
                Ok::<_, E>(sum)
            })?;
            let loss = (sum / batches.len().max(1) as f64) as f32;
            if !loss.is_finite() {
                return Err(MethodError::Diverged { epoch, loss }.into());
            }
            losses.push(loss);
            progress(Progress::Epoch {
                epoch,
                epochs: self.epochs,
                loss,
            });
            end(state, epoch);
        }
        Ok(losses)
    }
}

/// Whether a later epoch with the same validation accuracy replaces the kept one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    /// The first best epoch stays (`>`).
    KeepFirst,
    /// The later one wins (`≥`).
    KeepLast,
}

/// The best epoch on validation (the last one when there is no validation set, whose accuracy
/// is NaN), with a snapshot of what it trained.
#[derive(Debug, Clone)]
pub struct BestEpoch<T> {
    pub accuracy: f32,
    pub epoch: usize,
    pub value: T,
}

impl<T> BestEpoch<T> {
    /// The starting point, before any epoch.
    pub fn new(value: T) -> Self {
        BestEpoch {
            accuracy: f32::NEG_INFINITY,
            epoch: 0,
            value,
        }
    }

    /// Keeps `snapshot()` if `accuracy` is better than the kept one under `ties`.
    pub fn offer(&mut self, epoch: usize, accuracy: f32, ties: Ties, snapshot: impl FnOnce() -> T) {
        let better = match ties {
            Ties::KeepFirst => accuracy > self.accuracy,
            Ties::KeepLast => accuracy >= self.accuracy,
        };
        if accuracy.is_nan() || better {
            *self = BestEpoch {
                accuracy,
                epoch,
                value: snapshot(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_batching_keeps_its_references_rule() {
        let b = |batching: Batching, n| batching.batches(n);
        assert_eq!(b(Batching::DropLast { size: 4 }, 10), vec![0..4, 4..8]);
        assert_eq!(
            b(Batching::DropLast { size: 4 }, 3),
            std::iter::once(0..3).collect::<Vec<_>>()
        );
        assert_eq!(
            b(Batching::KeepLast { size: 4 }, 10),
            vec![0..4, 4..8, 8..10]
        );
        assert_eq!(
            b(Batching::Count { size: 4, count: 2 }, 30),
            vec![0..4, 4..8]
        );
        assert_eq!(
            b(Batching::Count { size: 4, count: 9 }, 6),
            vec![0..4, 4..6]
        );
        assert_eq!(
            b(Batching::Full, 5),
            std::iter::once(0..5).collect::<Vec<_>>()
        );
    }

    #[test]
    fn losses_are_batch_means_and_divergence_stops() {
        let run = |loss: f32| {
            EpochLoop {
                epochs: 3,
                batching: Batching::KeepLast { size: 2 },
            }
            .run(
                &mut (),
                5,
                &mut |_| vec![4, 3, 2, 1, 0],
                &mut |_, e, batch| {
                    Ok::<_, MethodError>(if e == 1 { loss } else { batch.len() as f32 })
                },
                &mut |_, _| {},
                &mut |_| {},
            )
        };
        assert_eq!(run(1.0).unwrap(), vec![5.0 / 3.0, 1.0, 5.0 / 3.0]);
        assert!(matches!(
            run(f32::NAN),
            Err(MethodError::Diverged { epoch: 1, .. })
        ));
        let zero = EpochLoop {
            epochs: 1,
            batching: Batching::DropLast { size: 0 },
        };
        let err = zero.run(
            &mut (),
            3,
            &mut |_| vec![],
            &mut |_, _, _| Ok::<_, MethodError>(0.0),
            &mut |_, _| {},
            &mut |_| {},
        );
        assert!(matches!(err, Err(MethodError::Option { .. })));
    }

    #[test]
    fn best_epoch_ties_and_no_validation() {
        let mut b = BestEpoch::new(0);
        b.offer(0, 50.0, Ties::KeepFirst, || 1);
        b.offer(1, 50.0, Ties::KeepFirst, || 2);
        assert_eq!((b.epoch, b.value), (0, 1));
        b.offer(2, 50.0, Ties::KeepLast, || 3);
        assert_eq!((b.epoch, b.value), (2, 3));
        let mut none = BestEpoch::new(0);
        for e in 0..3 {
            none.offer(e, f32::NAN, Ties::KeepFirst, || e);
        }
        assert_eq!(none.epoch, 2);
    }
}
