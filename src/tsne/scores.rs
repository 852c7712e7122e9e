//! The paper's Fig. 5 whole: one labelled set seen by several heads — zero-shot CLIP, CoOp,
//! CLIP-Adapter without the residual (α = 1) and CLIP-Adapter — each panel a t-SNE map of the
//! set in the space the head classifies in, with the numbers of that space beside it.
//!
//! The four heads cannot share the image-feature space: CoOp leaves the image features as CLIP
//! made them and learns the class side (the prompts' text embeddings), so a map of image
//! features would draw CoOp's panel identical to CLIP's whatever CoOp learned. What every head
//! has is its class scores, one per class for each image, and those decide the prediction. A
//! panel therefore maps each image's **centred class scores**, `s_k − mean_k s_k` with `s` the
//! head's logits: centring removes the one direction a softmax ignores (a constant added to
//! every class's score), and the cosine metric (the map L2-normalises too) removes the logit
//! scale, so heads trained to another temperature draw on the same footing. CLIP's panel is the
//! frozen features against the prompts' embeddings, CoOp's the same features against its learned
//! prompts', the adapters' their adapted features against the class embeddings.

use rayon::prelude::*;
use serde::Serialize;

use super::{
    separation, trustworthiness, Metric, Separation, SpaceView, TsneError, TsneOptions, KNN_K,
};
use crate::figure::scatter::{Panel, Scatter};
use crate::methods::head::Head;
use crate::methods::linalg::Matrix;
use crate::methods::FeatureSpace;

/// A head to map, under the name its panel shows.
#[derive(Debug, Clone, Copy)]
pub struct NamedHead<'a> {
    pub name: &'a str,
    pub head: &'a Head,
}

/// One panel: the head's name, its map of the centred class scores and their numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScorePanel {
    pub name: String,
    /// The head's accuracy on the set (its highest score on the point's class), in `[0, 1]`:
    /// separated classes need not be the right ones.
    pub accuracy: f32,
    pub view: SpaceView,
    /// How well the image features the head scores separate the classes (cosine): the frozen
    /// features for a head that leaves them as CLIP made them (zero-shot, CoOp), the adapted
    /// ones for CLIP-Adapter: the space of the paper's figure.
    pub image_features: Separation,
}

/// A labelled set in the class-score space of each of several heads, mapped and measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreTsne {
    pub classnames: Vec<String>,
    /// Class index of each point.
    pub labels: Vec<usize>,
    pub options: TsneOptions,
    /// One per head, in the order given.
    pub panels: Vec<ScorePanel>,
}

/// The head's logits of `features`, each row centred on its mean: the vector a panel maps.
pub fn centred_scores(head: &Head, features: &Matrix) -> Matrix {
    let mut s = head.logits(features);
    for row in s.data.chunks_exact_mut(s.cols.max(1)) {
        let mean = row.iter().sum::<f32>() / row.len() as f32;
        row.iter_mut().for_each(|v| *v -= mean);
    }
    s
}

/// Maps `features` (N × D, as the cache stores them) in the class-score space of every head of
/// `heads`; `labels` index `classnames`, the classes every head scores. Each head must score
/// D-wide projected features (a head on the features before the projection, ProLIP's, is
/// refused) and the same number of classes.
pub fn score_tsne(
    features: &Matrix,
    labels: &[usize],
    classnames: &[String],
    heads: &[NamedHead],
    opts: &TsneOptions,
) -> Result<ScoreTsne, TsneError> {
    if labels.len() != features.rows {
        return Err(TsneError::Counts {
            first: features.rows,
            first_what: "feature rows",
            second: labels.len(),
            second_what: "labels",
        });
    }
    if let Some(&l) = labels.iter().find(|&&l| l >= classnames.len()) {
        return Err(TsneError::Label {
            label: l,
            classes: classnames.len(),
        });
    }
    if classnames.len() < 2 {
        return Err(TsneError::Classes {
            classes: classnames.len(),
            points: features.rows,
        });
    }
    for h in heads {
        let space = match h.head.input() {
            FeatureSpace::Projected => None,
            FeatureSpace::PreProjection => Some("the image features before the projection"),
            FeatureSpace::Adapted => Some("images encoded through its own adapted image tower"),
        };
        if let Some(space) = space {
            return Err(TsneError::OtherFeatureSpace {
                name: h.name.to_string(),
                space,
            });
        }
        if h.head.dim() != features.cols {
            return Err(TsneError::FeatureWidth {
                found: features.cols,
                expected: h.head.dim(),
            });
        }
    }
    let needed = 2 * KNN_K + 1;
    if features.rows < needed {
        return Err(TsneError::TooFewPoints {
            points: features.rows,
            needed,
        });
    }
    opts.check(features.rows)?;
    let scores: Vec<Matrix> = heads
        .iter()
        .map(|h| centred_scores(h.head, features))
        .collect();
    if let Some((h, s)) = heads
        .iter()
        .zip(&scores)
        .find(|(_, s)| s.cols != classnames.len())
    {
        return Err(TsneError::HeadClasses {
            name: h.name.to_string(),
            scored: s.cols,
            classes: classnames.len(),
        });
    }
    // Each map is fitted on one thread (see `embed`): the panels run side by side.
    let views: Vec<Result<SpaceView, TsneError>> = scores
        .par_iter()
        .map(|s| SpaceView::new(s, labels, opts))
        .collect();
    let panels = heads
        .iter()
        .zip(scores.iter().zip(views))
        .map(|(h, (s, v))| {
            Ok(ScorePanel {
                name: h.name.to_string(),
                // Centring keeps each row's order of classes.
                accuracy: crate::methods::eval::accuracy(s, labels) / 100.0,
                view: v?,
                image_features: separation(
                    &h.head.image_features(features),
                    labels,
                    Metric::Cosine,
                    KNN_K,
                )?,
            })
        })
        .collect::<Result<_, TsneError>>()?;
    Ok(ScoreTsne {
        classnames: classnames.to_vec(),
        labels: labels.to_vec(),
        options: opts.clone(),
        panels,
    })
}

impl ScoreTsne {
    /// The numbers of every panel as a text table: a header and a line per panel.
    pub fn table(&self) -> String {
        let width = (self.panels.iter().map(|p| p.name.chars().count()))
            .max()
            .unwrap_or(0)
            .max(6);
        let mut out = format!(
            "{:<width$} {:>10} {:>12} {:>18} {:>10} {:>15} {:>16} {:>15} {:>20}",
            "",
            "accuracy",
            "5-NN scores",
            "silhouette scores",
            "5-NN map",
            "silhouette map",
            "trustworthiness",
            "5-NN features",
            "silhouette features"
        );
        for p in &self.panels {
            let (s, m) = (&p.view.features, &p.view.map);
            out.push_str(&format!(
                "\n{:<width$} {:>8.1} % {:>10.1} % {:>18.3} {:>8.1} % {:>15.3} {:>16.3} {:>13.1} % {:>20.3}",
                p.name,
                100.0 * p.accuracy,
                100.0 * s.knn_accuracy,
                s.silhouette,
                100.0 * m.knn_accuracy,
                m.silhouette,
                p.view.trustworthiness,
                100.0 * p.image_features.knn_accuracy,
                p.image_features.silhouette
            ));
        }
        out
    }

    /// The panels side by side, coloured by class, each titled with its map's numbers.
    pub fn chart(&self) -> Scatter {
        Scatter {
            panels: (self.panels.iter())
                .map(|p| Panel {
                    title: format!(
                        "{}: {KNN_K}-NN {:.1} %, silhouette {:.2}",
                        p.name,
                        100.0 * p.view.map.knn_accuracy,
                        p.view.map.silhouette
                    ),
                    points: p.view.coordinates.clone(),
                })
                .collect(),
            labels: self.labels.clone(),
            classnames: self.classnames.clone(),
        }
    }

    /// Writes `STEM.svg` and `STEM.png`, creating their folder if needed.
    pub fn write_figure(
        &self,
        stem: &std::path::Path,
    ) -> Result<[std::path::PathBuf; 2], TsneError> {
        super::create_parent(stem)?;
        Ok(crate::figure::write_figure(&self.chart(), stem)?)
    }

    /// The panel named `name`.
    pub fn panel(&self, name: &str) -> Option<&ScorePanel> {
        self.panels.iter().find(|p| p.name == name)
    }
}

/// The separation of a panel's points, recomputed from the head (what a panel claims, checked).
pub fn score_separation(
    head: &Head,
    features: &Matrix,
    labels: &[usize],
) -> Result<super::Separation, TsneError> {
    separation(
        &centred_scores(head, features),
        labels,
        Metric::Cosine,
        KNN_K,
    )
}

/// The trustworthiness of a map of a head's centred class scores.
pub fn score_trustworthiness(
    head: &Head,
    features: &Matrix,
    map: &[[f32; 2]],
) -> Result<f32, TsneError> {
    let map = Matrix {
        rows: map.len(),
        cols: 2,
        data: map.iter().flatten().copied().collect(),
    };
    trustworthiness(&centred_scores(head, features), Metric::Cosine, &map, KNN_K)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::clip_adapter::{AdapterModel, AdapterOptions, Branch};
    use crate::methods::linalg::seeded_rng;
    use crate::methods::zero_shot::ZeroShot;
    use crate::methods::{FewShotTask, LabelledSet, Method, TextClassifier};

    /// 5 classes × 12 points in 16 dimensions, each class a noisy direction; the "text"
    /// embeddings point halfway between the class directions and noise, so zero-shot is weak.
    fn task(seed: u64) -> FewShotTask {
        let (k, per, d) = (5, 12, 16);
        let mut rng = seeded_rng(seed);
        let labels: Vec<usize> = (0..k * per).map(|i| i % k).collect();
        let mut x = Matrix::from_vec(k * per, d, rng.uniform_vec(k * per * d, 1.0)).unwrap();
        for (i, &y) in labels.iter().enumerate() {
            x.data[i * d + y] += 1.2;
        }
        let mut w = Matrix::from_vec(k, d, rng.uniform_vec(k * d, 1.0)).unwrap();
        for c in 0..k {
            w.data[c * d + c] += 0.6;
        }
        let set = LabelledSet {
            features: x,
            labels,
        };
        FewShotTask {
            pre_projection: None,
            text_mean: None,
            classnames: (0..k).map(|i| format!("c{i}")).collect(),
            train: set.clone(),
            train_views: Vec::new(),
            val: set.clone(),
            test: set,
            text: TextClassifier {
                weights: w.normalized(),
                logit_scale: 30.0,
                logit_bias: None,
            },
        }
    }

    fn adapter(task: &FewShotTask, alpha: f32) -> Head {
        let m = Method::new(AdapterOptions {
            branch: Branch::Visual,
            alpha,
            epochs: Some(20),
            batch_size: 8,
            lr: 0.05,
            ..AdapterOptions::default()
        });
        let fitted = crate::methods::fit(&m, task, &mut |_| {}).unwrap();
        assert!(fitted.head.downcast_ref::<AdapterModel>().is_some());
        fitted.head
    }

    fn opts() -> TsneOptions {
        TsneOptions {
            perplexity: 10.0,
            epochs: 300,
            seed: 3,
            ..TsneOptions::default()
        }
    }

    #[test]
    fn every_panel_maps_and_measures_its_own_heads_scores() {
        let t = task(1);
        let clip = Head::new(ZeroShot::new(&t.text));
        // A head of other class embeddings, as CoOp's learned prompts give: each class's
        // embedding moved towards the next one's. (Permuted embeddings alone would permute the
        // score columns, which the cosine distances between score rows do not see: the scores
        // then differ only by rounding, and not at all at the portable SIMD level.)
        let w = &t.text.weights;
        let next = w.gather_rows(&[1, 2, 3, 4, 0]);
        let mixed: Vec<f32> = w
            .data
            .iter()
            .zip(&next.data)
            .map(|(a, b)| a + 0.8 * b)
            .collect();
        let learned = TextClassifier {
            weights: Matrix::from_vec(w.rows, w.cols, mixed)
                .unwrap()
                .normalized(),
            ..t.text.clone()
        };
        let coop = Head::new(ZeroShot::new(&learned));
        let (no_residual, adapter) = (adapter(&t, 1.0), adapter(&t, 0.5));
        let heads = [
            NamedHead {
                name: "CLIP",
                head: &clip,
            },
            NamedHead {
                name: "CoOp",
                head: &coop,
            },
            NamedHead {
                name: "α = 1",
                head: &no_residual,
            },
            NamedHead {
                name: "CLIP-Adapter",
                head: &adapter,
            },
        ];
        let x = &t.test.features;
        let made = score_tsne(x, &t.test.labels, &t.classnames, &heads, &opts()).unwrap();
        assert_eq!(made.panels.len(), 4);
        assert_eq!(made.chart().panels.len(), 4);
        for (p, h) in made.panels.iter().zip(&heads) {
            assert_eq!(p.name, h.name);
            assert_eq!(p.view.coordinates.len(), x.rows);
            let sep = score_separation(h.head, x, &t.test.labels).unwrap();
            assert_eq!(p.view.features, sep, "{}", p.name);
            let trust = score_trustworthiness(h.head, x, &p.view.coordinates).unwrap();
            assert_eq!(p.view.trustworthiness, trust, "{}", p.name);
            let acc = crate::methods::eval::accuracy(&h.head.logits(x), &t.test.labels);
            assert!((100.0 * p.accuracy - acc).abs() < 1e-3, "{}: {acc}", p.name);
        }
        // Other class embeddings, another space: CoOp's panel is not CLIP's.
        assert_ne!(made.panels[0].view.features, made.panels[1].view.features);
        assert_ne!(
            made.panels[0].view.coordinates,
            made.panels[1].view.coordinates
        );
        // The table has a line per panel.
        assert_eq!(made.table().lines().count(), 5);
    }

    #[test]
    fn centred_scores_ignore_a_constant_added_to_every_class() {
        let t = task(2);
        let head = Head::new(ZeroShot::new(&t.text));
        let s = centred_scores(&head, &t.test.features);
        for row in s.data.chunks_exact(s.cols) {
            assert!(row.iter().sum::<f32>().abs() < 1e-3, "{row:?}");
        }
        let raw = head.logits(&t.test.features);
        assert_eq!(raw.cols, s.cols);
        assert!((raw.data[1] - raw.data[0] - (s.data[1] - s.data[0])).abs() < 1e-4);
    }

    #[test]
    fn bad_heads_and_sets_are_refused_with_what_was_expected() {
        let t = task(3);
        let clip = Head::new(ZeroShot::new(&t.text));
        let x = &t.test.features;
        let one = [NamedHead {
            name: "CLIP",
            head: &clip,
        }];
        let narrow = x
            .transposed()
            .gather_rows(&(0..8).collect::<Vec<_>>())
            .transposed();
        let err = score_tsne(&narrow, &t.test.labels, &t.classnames, &one, &opts()).unwrap_err();
        assert!(
            err.to_string().contains("8 wide") && err.to_string().contains("16"),
            "{err}"
        );
        let err = score_tsne(x, &t.test.labels[1..], &t.classnames, &one, &opts()).unwrap_err();
        assert!(err.to_string().contains("labels"), "{err}");
        let err = score_tsne(x, &t.test.labels, &t.classnames[..3], &one, &opts()).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        // A head of fewer classes than the set's.
        let fewer = TextClassifier {
            weights: t.text.weights.gather_rows(&[0, 1, 2]),
            ..t.text.clone()
        };
        let fewer = Head::new(ZeroShot::new(&fewer));
        let two = [
            one[0],
            NamedHead {
                name: "three classes",
                head: &fewer,
            },
        ];
        let err = score_tsne(x, &t.test.labels, &t.classnames, &two, &opts()).unwrap_err();
        assert!(
            err.to_string().contains("`three classes` scores 3 classes"),
            "{err}"
        );
    }
}
