//! The t-SNE of the adapted feature space: deterministic per seed, metrics with known answers and
//! against scikit-learn on a committed fixture (`scripts/fixtures/tsne.py`), the adapted feature
//! being the one the head classifies, and `clip-adapter tsne` end to end on tiny-clip features.

use std::path::Path;

use clip_adapter::features::task::CacheQuery;
use clip_adapter::methods::clip_adapter::{AdapterModel, AdapterParams, Bottleneck, Ratio};
use clip_adapter::methods::head;
use clip_adapter::methods::Matrix;
use clip_adapter::rng::SplitMix64;
use clip_adapter::tsne::{
    self, adapter_tsne, embed, knn_preservation, separation, trustworthiness, Metric, Split,
    TsneError, TsneOptions,
};

use crate::common::{assert_fails_with, cli_in, fixture, ok};

struct Clusters {
    features: Matrix,
    labels: Vec<usize>,
    doc: serde_json::Value,
}

fn matrix(rows: &serde_json::Value) -> Matrix {
    let rows = rows.as_array().expect("a list of rows");
    let cols = rows[0].as_array().expect("a row").len();
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.as_array().expect("a row").iter())
        .map(|v| v.as_f64().expect("a number") as f32)
        .collect();
    Matrix::from_vec(rows.len(), cols, data).expect("rows of one width")
}

fn clusters() -> Clusters {
    let text = std::fs::read_to_string(fixture("tsne/clusters.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    Clusters {
        features: matrix(&doc["features"]),
        labels: doc["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect(),
        doc,
    }
}

fn num(v: &serde_json::Value) -> f32 {
    v.as_f64().expect("a number") as f32
}

#[test]
fn the_map_is_deterministic_per_seed() {
    let c = clusters();
    let opts = |seed| TsneOptions {
        seed,
        ..TsneOptions::default()
    };
    let a = embed(&c.features, &opts(1)).unwrap();
    // Several runs at once, as the thread pool of a test binary is busy with other tests.
    let again: Vec<Matrix> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..3)
            .map(|_| s.spawn(|| embed(&c.features, &opts(1)).unwrap()))
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for b in &again {
        assert_eq!(&a, b, "the same seed gave two maps");
    }
    let other = embed(&c.features, &opts(2)).unwrap();
    assert_ne!(a, other, "another seed gave the same map");
    assert_eq!((a.rows, a.cols), (200, 2));
}

#[test]
fn metrics_match_scikit_learn_on_the_same_points() {
    let c = clusters();
    let r = &c.doc["reference_embedding"];
    let map = matrix(&r["embedding"]);
    // Exact quantities (ranks, counts) up to float rounding of the final sum.
    for (k, key) in [(5, "trustworthiness_5"), (10, "trustworthiness_10")] {
        let ours = trustworthiness(&c.features, Metric::Cosine, &map, k).unwrap();
        let theirs = num(&r[key]);
        assert!((ours - theirs).abs() < 1e-6, "{key}: {ours} vs {theirs}");
    }
    let kept = knn_preservation(&c.features, Metric::Cosine, &map, 10).unwrap();
    assert!(
        (kept - num(&r["knn_preservation_10"])).abs() < 1e-6,
        "{kept}"
    );
    let in_map = separation(&map, &c.labels, Metric::Euclidean, 5).unwrap();
    assert_eq!(in_map.knn_accuracy, num(&r["knn_accuracy_5"]));
    assert!(
        (in_map.silhouette - num(&r["silhouette"])).abs() < 1e-5,
        "{in_map:?}"
    );
    let f = &c.doc["feature_metrics"];
    let in_features = separation(&c.features, &c.labels, Metric::Cosine, 5).unwrap();
    assert_eq!(in_features.knn_accuracy, num(&f["knn_accuracy_5"]));
    // Cosine distances through an f32 GEMM against scikit-learn's float64.
    assert!(
        (in_features.silhouette - num(&f["silhouette"])).abs() < 1e-4,
        "{in_features:?}"
    );
}

#[test]
fn the_map_is_as_trustworthy_as_scikit_learns() {
    let c = clusters();
    let runs = c.doc["sklearn_tsne"].as_array().unwrap();
    let mean = |key: &str| runs.iter().map(|r| num(&r[key])).sum::<f32>() / runs.len() as f32;
    let spread = |key: &str| {
        let v: Vec<f32> = runs.iter().map(|r| num(&r[key])).collect();
        v.iter().cloned().fold(f32::MIN, f32::max) - v.iter().cloned().fold(f32::MAX, f32::min)
    };
    for seed in [1, 2] {
        let map = embed(
            &c.features,
            &TsneOptions {
                seed,
                ..TsneOptions::default()
            },
        )
        .unwrap();
        // scikit-learn's own runs spread by 0.006 (k = 5) and 0.004 (k = 10) over five seeds; a
        // map within 0.015 of their mean is one of theirs, a broken one (no early exaggeration,
        // wrong affinities, a random map) falls far below (a shuffled map scores about 0.5).
        for (k, key) in [(5, "trustworthiness_5"), (10, "trustworthiness_10")] {
            let ours = trustworthiness(&c.features, Metric::Cosine, &map, k).unwrap();
            println!(
                "seed {seed} {key}: ours {ours:.4}, scikit-learn {:.4} (spread {:.4})",
                mean(key),
                spread(key)
            );
            assert!(
                (ours - mean(key)).abs() < 0.015,
                "{key}: {ours} vs {}",
                mean(key)
            );
        }
        let kept = knn_preservation(&c.features, Metric::Cosine, &map, 10).unwrap();
        let want = mean("knn_preservation_10");
        println!("seed {seed} 10-NN preservation: ours {kept:.4}, scikit-learn {want:.4}");
        assert!(
            (kept - want).abs() < 0.05,
            "10-NN preservation {kept} vs {want}"
        );
    }
}

/// `n` points per class around `classes` far-apart centres in `dim` dimensions.
fn separated(classes: usize, n: usize, dim: usize, seed: u64) -> (Matrix, Vec<usize>) {
    let mut rng = SplitMix64::from_state(seed);
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for c in 0..classes {
        for _ in 0..n {
            for d in 0..dim {
                let centre = if d % classes == c { 10.0 } else { 1.0 };
                data.push(centre + 0.3 * rng.normal());
            }
            labels.push(c);
        }
    }
    (Matrix::from_vec(classes * n, dim, data).unwrap(), labels)
}

#[test]
fn separated_clusters_get_full_marks_in_both_spaces() {
    let (x, labels) = separated(3, 20, 9, 7);
    let s = separation(&x, &labels, Metric::Cosine, 5).unwrap();
    assert_eq!(s.knn_accuracy, 1.0);
    assert!(s.silhouette > 0.8, "{s:?}");
    let opts = TsneOptions {
        perplexity: 10.0,
        ..TsneOptions::default()
    };
    let map = embed(&x, &opts).unwrap();
    let m = separation(&map, &labels, Metric::Euclidean, 5).unwrap();
    assert_eq!(m.knn_accuracy, 1.0);
    assert!(m.silhouette > 0.6, "{m:?}");
    assert!(trustworthiness(&x, Metric::Cosine, &map, 5).unwrap() > 0.9);
    // Labels that ignore the clusters: chance-level neighbours, silhouette near 0.
    let shuffled: Vec<usize> = (0..labels.len()).map(|i| i % 3).collect();
    let r = separation(&x, &shuffled, Metric::Cosine, 5).unwrap();
    assert!(r.knn_accuracy < 0.5 && r.silhouette.abs() < 0.1, "{r:?}");
}

/// A visual adapter (official form) on `dim`-wide features with ratio `alpha`.
fn adapter(dim: usize, alpha: f32, text: Option<Bottleneck>) -> AdapterModel {
    let mut rng = SplitMix64::from_state(3);
    let hidden = dim / 2;
    let visual = Bottleneck {
        dim,
        hidden,
        w1: rng.uniform_vec(dim * hidden, 0.5),
        w2: rng.uniform_vec(hidden * dim, 0.5),
        relu_out: true,
    };
    let classes = Matrix::from_vec(3, dim, rng.uniform_vec(3 * dim, 1.0))
        .unwrap()
        .normalized();
    AdapterModel {
        params: AdapterParams {
            visual: Some(visual),
            text,
            alpha: Ratio::Fixed(alpha),
            beta: Ratio::Fixed(0.2),
        },
        classes,
        logit_scale: 100.0,
    }
}

#[test]
fn the_adapted_feature_is_the_one_the_head_classifies() {
    let (x, _) = separated(3, 4, 6, 1);
    let model = adapter(6, 0.3, None);
    let adapted = model.adapted_features(&x).unwrap();
    let b = model.params.visual.as_ref().unwrap();
    for i in 0..x.rows {
        let f = x.row(i);
        let h: Vec<f32> = (0..b.hidden)
            .map(|j| {
                (0..6)
                    .map(|d| f[d] * b.w1[d * b.hidden + j])
                    .sum::<f32>()
                    .max(0.0)
            })
            .collect();
        for (d, &fd) in f.iter().enumerate() {
            let a = (0..b.hidden)
                .map(|j| h[j] * b.w2[j * 6 + d])
                .sum::<f32>()
                .max(0.0);
            let want = 0.3 * a + 0.7 * fd;
            assert!((adapted.row(i)[d] - want).abs() < 1e-4, "row {i} dim {d}");
        }
    }
    // Cosine against the classes, scaled: the head's logits.
    let logits = model.logits(&x);
    let again = adapted.normalized().matmul(false, &model.classes, true);
    for (l, a) in logits.data.iter().zip(&again.data) {
        assert!((l - 100.0 * a).abs() < 1e-3, "{l} vs {}", 100.0 * a);
    }
    // Without a visual adapter there is nothing to map.
    let mut text_only = model.clone();
    text_only.params.visual = None;
    assert!(text_only.adapted_features(&x).is_none());
}

#[test]
fn a_zero_ratio_adapter_leaves_the_map_unchanged() {
    let (x, labels) = separated(3, 12, 6, 2);
    let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let opts = TsneOptions {
        perplexity: 5.0,
        epochs: 300,
        ..TsneOptions::default()
    };
    let same = adapter_tsne(&x, &labels, &names, &adapter(6, 0.0, None), &opts).unwrap();
    assert_eq!(same.before, same.after);
    let moved = adapter_tsne(&x, &labels, &names, &adapter(6, 0.9, None), &opts).unwrap();
    assert_eq!(moved.before, same.before);
    assert_ne!(moved.after.coordinates, same.after.coordinates);
    // The figure: two panels of every point, a title with each map's numbers, the legend.
    let svg = clip_adapter::figure::render_svg(&moved.chart(), Path::new("t.svg")).unwrap();
    assert_eq!(
        svg.matches("<circle").count(),
        2 * labels.len() + names.len()
    );
    let title = format!(
        "after (CLIP-Adapter): 5-NN {:.1} %, silhouette {:.2}",
        100.0 * moved.after.map.knn_accuracy,
        moved.after.map.silhouette
    );
    assert!(svg.contains(&title), "no `{title}`");
    // Bad input is an error, not a panic.
    let err = adapter_tsne(&x, &labels[1..], &names, &adapter(6, 0.5, None), &opts).unwrap_err();
    assert!(matches!(err, TsneError::Counts { .. }), "{err}");
    let err = adapter_tsne(&x, &labels, &names[..2], &adapter(6, 0.5, None), &opts).unwrap_err();
    assert!(err.to_string().contains("label 2 is out of range"), "{err}");
    let big = TsneOptions {
        perplexity: 30.0,
        ..opts
    };
    let err = adapter_tsne(&x, &labels, &names, &adapter(6, 0.5, None), &big).unwrap_err();
    assert!(
        err.to_string()
            .contains("only 36 points: use a perplexity of at most 11"),
        "{err}"
    );
}

/// A three-class image folder, its 2-shot features from tiny-clip and a CLIP-Adapter head fitted
/// on them; the dataset's name.
fn setup(dir: &Path) -> String {
    crate::features::image_folder(&dir.join("data"), 3, 20);
    let dataset = crate::common::extract_two_shots(dir);
    for (method, file, extra) in [
        ("clip-adapter", "head.safetensors", vec!["--epochs", "3"]),
        (
            "clip-adapter",
            "text.safetensors",
            vec!["--epochs", "3", "--branch", "text"],
        ),
        ("linear-probe", "linear.safetensors", vec![]),
    ] {
        let mut args = vec![
            "fit",
            "--method",
            method,
            "--dataset",
            &dataset,
            "--shots",
            "2",
            "--seed",
            "1",
            "--cache",
            "cache",
            "--save",
            file,
        ];
        args.extend(extra);
        ok(&cli_in(dir, &args));
    }
    dataset
}

/// `tsne` of the setup's 2-shot draw with `heads` (`--adapter F` or `--head F ...`) and `extra`,
/// writing `figs/tsne`.
fn tsne_in(dir: &Path, dataset: &str, heads: &[&str], extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "tsne",
        "--cache",
        "cache",
        "--dataset",
        dataset,
        "--shots",
        "2",
    ];
    args.extend(["--seed", "1", "--out", "figs/tsne"]);
    args.extend_from_slice(heads);
    // The test split has 18 images: perplexity 3 (9 neighbours) unless the test sets one.
    if !extra.contains(&"--perplexity") {
        args.extend(["--perplexity", "3"]);
    }
    args.extend_from_slice(extra);
    cli_in(dir, &args)
}

fn tsne_cli(dir: &Path, dataset: &str, adapter: &str, extra: &[&str]) -> std::process::Output {
    tsne_in(dir, dataset, &["--adapter", adapter], extra)
}

#[test]
fn tsne_command_maps_the_test_split_and_refuses_what_it_cannot_map() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dataset = setup(dir);

    let doc: serde_json::Value = serde_json::from_str(&ok(&tsne_cli(
        dir,
        &dataset,
        "head.safetensors",
        &["--json"],
    )))
    .unwrap();
    let n = doc["labels"].as_array().unwrap().len();
    assert!(n >= 15, "{n} test points");
    assert_eq!(doc["split"], "test");
    assert_eq!(doc["classnames"].as_array().unwrap().len(), 3);
    for side in ["before", "after"] {
        let v = &doc[side];
        assert_eq!(v["coordinates"].as_array().unwrap().len(), n, "{side}");
        for key in ["knn_accuracy", "silhouette"] {
            for space in ["features", "map"] {
                let x = v[space][key].as_f64().unwrap();
                assert!((-1.0..=1.0).contains(&x), "{side} {space} {key} = {x}");
            }
        }
        assert!(v["trustworthiness"].as_f64().unwrap() > 0.0);
    }
    let svg = std::fs::read_to_string(dir.join("figs/tsne.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 2 * n + 3);
    for name in doc["classnames"].as_array().unwrap() {
        assert!(svg.contains(name.as_str().unwrap()), "legend lacks {name}");
    }
    assert!(svg.contains("before (CLIP): 5-NN"));
    image::open(dir.join("figs/tsne.png")).expect("the PNG decodes");

    // The same inputs give the same output, byte for byte (the figure's paths included).
    let again = ok(&tsne_cli(dir, &dataset, "head.safetensors", &["--json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again).unwrap(),
        doc
    );
    let table = ok(&tsne_cli(dir, &dataset, "head.safetensors", &[]));
    assert!(
        table.contains("before (CLIP)") && table.contains("wrote "),
        "{table}"
    );

    // What cannot be mapped is refused, naming why.
    assert_fails_with(
        &tsne_cli(dir, &dataset, "linear.safetensors", &[]),
        &["linear.safetensors", "no visual adapter"],
    );
    assert_fails_with(
        &tsne_cli(dir, &dataset, "text.safetensors", &[]),
        &["text branch only", "no visual adapter"],
    );
    assert_fails_with(
        &tsne_cli(dir, "no-such-dataset", "head.safetensors", &[]),
        &["no cached features of `no-such-dataset`"],
    );
    assert_fails_with(
        &tsne_cli(dir, &dataset, "missing.safetensors", &[]),
        &["missing.safetensors"],
    );
    assert_fails_with(
        &tsne_cli(dir, &dataset, "head.safetensors", &["--perplexity", "40"]),
        &["perplexity 40", "a perplexity of at most"],
    );
    // The 2-shot validation draw has 6 images.
    assert_fails_with(
        &tsne_cli(dir, &dataset, "head.safetensors", &["--split", "val"]),
        &["val features", "only 6 points", "at least 11"],
    );

    // A head trained on another model's features.
    let (h, mut info) = head::load(&dir.join("head.safetensors")).unwrap();
    info.model_fingerprint = Some("0123456789abcdef".into());
    head::save(&dir.join("other.safetensors"), &h, &info).unwrap();
    let err = tsne::adapter_tsne_from_cache(
        &CacheQuery::new(dir.join("cache"), &dataset, 2.into(), 1),
        &dir.join("other.safetensors"),
        Split::Test,
        &TsneOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, TsneError::ModelMismatch(_)), "{err}");
    assert_fails_with(
        &tsne_cli(dir, &dataset, "other.safetensors", &[]),
        &["0123456789abcdef", "another model's features"],
    );
}

/// `tsne --head H ...` for each of `heads`.
fn heads_cli(dir: &Path, dataset: &str, heads: &[&str], extra: &[&str]) -> std::process::Output {
    let heads: Vec<&str> = heads.iter().flat_map(|h| ["--head", h]).collect();
    tsne_in(dir, dataset, &heads, extra)
}

#[test]
fn tsne_command_maps_saved_heads_one_panel_each_coop_included() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dataset = setup(dir);
    let model = fixture("models/tiny-clip");
    let coop = ok(&cli_in(
        dir,
        &[
            "fit",
            "--method",
            "coop",
            "--dataset",
            &dataset,
            "--shots",
            "2",
            "--cache",
            "cache",
            "--model",
            model.to_str().unwrap(),
            "--epochs",
            "2",
            "--n-ctx",
            "4",
            "--save",
            "coop.safetensors",
            "--json",
        ],
    ));
    let coop: serde_json::Value = serde_json::from_str(&coop).unwrap();

    let heads = ["coop.safetensors", "head.safetensors", "linear.safetensors"];
    let doc: serde_json::Value = serde_json::from_str(&ok(&heads_cli(
        dir,
        &dataset,
        &heads,
        &["--label", "CoOp (4 tokens)", "--json"],
    )))
    .unwrap();
    let panels = doc["panels"].as_array().unwrap();
    let names: Vec<&str> = panels.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["CLIP", "CoOp (4 tokens)", "CLIP-Adapter", "Linear probe"]
    );
    let n = doc["labels"].as_array().unwrap().len();
    for p in panels {
        assert_eq!(p["view"]["coordinates"].as_array().unwrap().len(), n);
        assert!(p["view"]["trustworthiness"].as_f64().unwrap() > 0.0);
    }
    // CoOp's panel scores the test images as `fit` did: the same accuracy.
    let coop_accuracy = 100.0 * panels[1]["accuracy"].as_f64().unwrap();
    let fitted = coop["test_accuracy"].as_f64().unwrap();
    assert!(
        (coop_accuracy - fitted).abs() < 1e-3,
        "{coop_accuracy} vs {fitted}"
    );
    // CoOp learned prompts, not features: its image features are CLIP's, its scores are not.
    assert_eq!(panels[1]["image_features"], panels[0]["image_features"]);
    assert_ne!(
        panels[1]["view"]["coordinates"],
        panels[0]["view"]["coordinates"]
    );
    // The adapter changes the features it scores.
    assert_ne!(panels[2]["image_features"], panels[0]["image_features"]);
    let svg = std::fs::read_to_string(dir.join("figs/tsne.svg")).unwrap();
    assert_eq!(svg.matches("<circle").count(), 4 * n + 3);
    assert!(svg.contains("CoOp (4 tokens): 5-NN"), "{svg:.200}");
    let table = ok(&heads_cli(dir, &dataset, &heads, &[]));
    assert!(
        table.contains("Linear probe") && table.contains("5-NN features"),
        "{table}"
    );

    // Two heads of one method are told apart by their files.
    let doc: serde_json::Value = serde_json::from_str(&ok(&heads_cli(
        dir,
        &dataset,
        &["head.safetensors", "text.safetensors"],
        &["--json"],
    )))
    .unwrap();
    let names: Vec<&str> = (doc["panels"].as_array().unwrap().iter())
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["CLIP", "CLIP-Adapter (head)", "CLIP-Adapter (text)"]
    );

    // Refused, naming why.
    assert_fails_with(
        &heads_cli(
            dir,
            &dataset,
            &["head.safetensors"],
            &["--label", "a", "--label", "b"],
        ),
        &["2 --label values for 1 --head files"],
    );
    let (h, mut info) = head::load(&dir.join("head.safetensors")).unwrap();
    info.model_fingerprint = Some("0123456789abcdef".into());
    head::save(&dir.join("other.safetensors"), &h, &info).unwrap();
    assert_fails_with(
        &heads_cli(
            dir,
            &dataset,
            &["coop.safetensors", "other.safetensors"],
            &[],
        ),
        &["0123456789abcdef", "another model's features"],
    );
    let both = heads_cli(
        dir,
        &dataset,
        &["head.safetensors"],
        &["--adapter", "head.safetensors"],
    );
    assert_eq!(both.status.code(), Some(2), "--adapter and --head together");
}
