//! `clip-adapter report` on a results folder of synthetic rows (methods, CLIP-Adapter's
//! variants, a bottleneck and an α sweep; two datasets, five shot counts, two seeds): every
//! figure written as SVG and PNG, each series in its legend and drawn as a line, the same bytes
//! on a second run, the ablation tables and curves, published numbers as markers where the
//! backbone matches, and bad folders refused with nothing written.

use std::path::{Path, PathBuf};

use clip_adapter::experiment::row::write_csv;
use clip_adapter::experiment::{Published, ResultRow};
use clip_adapter::figure::lines::{faint, PANEL_W};
use clip_adapter::figure::style::method_style;
use clip_adapter::report::{write_report, ReportOptions};
use plotters::style::RGBColor;

use crate::common::{assert_fails_with, cli_in, ok};

const DATASETS: [&str; 2] = ["eurosat", "dtd"];
const SHOTS: [usize; 5] = [1, 2, 4, 8, 16];

fn row(method: &str, options: &str, dataset: &str, shots: usize, seed: u64, acc: f32) -> ResultRow {
    ResultRow {
        method: method.into(),
        options: options.into(),
        dataset: dataset.into(),
        shots,
        seed,
        validation: Default::default(),
        model: "0123456789abcdef".into(),
        model_name: "not-a-model-on-this-machine".into(),
        features: "fedcba9876543210".into(),
        val_accuracy: acc,
        test_accuracy: acc,
        train_seconds: 0.5,
        chosen: String::new(),
        augmentation: String::new(),
        protocol: Default::default(),
        new_accuracy: None,
        source_dataset: String::new(),
    }
}

/// Accuracies that grow with shots, differ per method, dataset and seed.
fn rows() -> Vec<ResultRow> {
    let mut out = Vec::new();
    let methods = [
        ("zero-shot", "", 0.0),
        ("clip-adapter", "", 6.0),
        ("clip-adapter", "branch=text", 3.0),
        ("clip-adapter", "branch=both", 5.0),
        ("tip-adapter", "", 4.0),
    ];
    for (d, base) in DATASETS.iter().zip([40.0f32, 55.0]) {
        for &k in &SHOTS {
            for seed in [1, 2] {
                for (m, o, gain) in methods {
                    let grows = if m == "zero-shot" {
                        0.0
                    } else {
                        (k as f32).log2() * 2.0
                    };
                    let acc = base + gain + grows + seed as f32 * 0.5;
                    out.push(row(m, o, d, k, seed, acc));
                }
                if k == 16 {
                    for r in [1, 2, 4, 8] {
                        let acc = base + 10.0 - (r as f32).log2() + seed as f32 * 0.5;
                        out.push(row(
                            "clip-adapter",
                            &format!("reduction={r}"),
                            d,
                            k,
                            seed,
                            acc,
                        ));
                    }
                    for a in ["0", "0.5", "1"] {
                        let x: f32 = a.parse().unwrap();
                        let acc = base + 8.0 * x * (1.0 - x) * 2.0;
                        out.push(row("clip-adapter", &format!("alpha={a}"), d, k, seed, acc));
                    }
                }
            }
        }
    }
    out
}

fn folder(dir: &Path) -> PathBuf {
    let out = dir.join("results");
    std::fs::create_dir_all(&out).unwrap();
    write_csv(&out.join("results.csv"), &rows()).unwrap();
    out
}

fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// The SVG elements (`<polyline ...`) of `kind` that carry `attr`.
fn elements<'a>(svg: &'a str, kind: &str, attr: &str) -> Vec<&'a str> {
    svg.split('<')
        .filter(|e| e.starts_with(kind) && e.contains(attr))
        .collect()
}

/// The SVG's texts, trimmed (plotters writes each on its own line inside `<text>`).
fn texts(svg: &str) -> Vec<&str> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t.split_once('>')?.1.split("</text>").next()?.trim()))
        .collect()
}

fn has_text(svg: &str, text: &str) -> bool {
    texts(svg).contains(&text)
}

fn svg_size(svg: &str) -> (u32, u32) {
    let attr = |name: &str| -> u32 {
        let at = svg.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        svg[at..].split('"').next().unwrap().parse().unwrap()
    };
    (attr("width"), attr("height"))
}

/// Every file under `dir`, with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![(
        PathBuf::from("report.md"),
        std::fs::read(dir.join("report.md")).unwrap(),
    )];
    let mut figures: Vec<PathBuf> = std::fs::read_dir(dir.join("figures"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    figures.sort();
    out.extend(figures.into_iter().map(|p| {
        let bytes = std::fs::read(&p).unwrap();
        (p, bytes)
    }));
    out
}

#[test]
fn report_writes_every_figure_with_its_series_and_regenerates_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = folder(tmp.path());
    let doc: serde_json::Value =
        serde_json::from_str(&ok(&cli_in(tmp.path(), &["report", "results", "--json"]))).unwrap();
    assert_eq!(doc["rows"], rows().len());
    let stems = [
        "accuracy_vs_shots",
        "all_methods_vs_shots",
        "gain_over_zero_shot",
        "clip_adapter_variants",
        "ablation_reduction",
        "ablation_alpha",
    ];
    let figures: Vec<String> = (doc["figures"].as_array().unwrap().iter())
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(figures.len(), 2 * stems.len(), "{figures:?}");

    let read = |stem: &str| {
        let svg = std::fs::read_to_string(out.join(format!("figures/{stem}.svg"))).unwrap();
        let png = image::open(out.join(format!("figures/{stem}.png"))).unwrap();
        assert_eq!((png.width(), png.height()), svg_size(&svg), "{stem}");
        svg
    };
    // Each series: its legend label, and a line in its colour (zero-shot: dashed, many pieces).
    let has_series = |svg: &str, label: &str, colour: RGBColor| {
        assert!(has_text(svg, label), "no legend entry `{label}`");
        let stroke = format!("stroke=\"{}\"", hex(colour));
        assert!(
            !elements(svg, "polyline", &stroke).is_empty(),
            "no line in {stroke} for `{label}`"
        );
    };

    // Accuracy vs shots, the paper's Fig. 2: a panel per dataset and the average, a line per
    // method of the paper's comparison; every method in the next figure; the sweep's points
    // are not methods.
    let all = read("all_methods_vs_shots");
    let svg = read("accuracy_vs_shots");
    assert_eq!(svg_size(&svg).0, 3 * PANEL_W);
    for title in ["eurosat", "dtd", "average"] {
        assert!(has_text(&svg, title), "no panel `{title}`");
    }
    for label in ["zero-shot", "clip-adapter"] {
        has_series(&svg, label, method_style(label).colour);
    }
    for label in [
        "zero-shot",
        "clip-adapter",
        "clip-adapter (branch=text)",
        "clip-adapter (branch=both)",
        "tip-adapter",
    ] {
        has_series(&all, label, method_style(label).colour);
    }
    assert!(
        !has_text(&svg, "tip-adapter"),
        "not a method of the paper's figure"
    );
    for svg in [&svg, &all] {
        assert!(!svg.contains("reduction=") && !svg.contains("alpha="));
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| rank | method | accuracy | vs zero-shot |"),
        "{md}"
    );
    let dashes = elements(
        &svg,
        "polyline",
        &format!("stroke=\"{}\"", hex(method_style("zero-shot").colour)),
    );
    assert!(
        dashes.len() > 10,
        "zero-shot is dashed: {} pieces",
        dashes.len()
    );
    // Tick labels are the shot counts.
    for k in SHOTS {
        assert!(has_text(&svg, &k.to_string()), "no tick {k}");
    }

    // Gains: a bar per dataset, sorted, with its value; clip-adapter gains 6 + 8 points.
    let svg = read("gain_over_zero_shot");
    assert!(has_text(&svg, "+14.00"), "gain text");
    assert_eq!(
        elements(
            &svg,
            "rect",
            &format!("fill=\"{}\"", hex(method_style("clip-adapter").colour))
        )
        .len(),
        2
    );

    let svg = read("clip_adapter_variants");
    for label in [
        "clip-adapter",
        "clip-adapter (branch=text)",
        "clip-adapter (branch=both)",
        "zero-shot",
    ] {
        has_series(&svg, label, method_style(label).colour);
    }
    assert!(!has_text(&svg, "tip-adapter"));

    // Ablations: a line per dataset and their mean, ticks named as the paper's table.
    for (stem, ticks) in [
        ("ablation_reduction", &["D", "D/2", "D/4", "D/8"][..]),
        ("ablation_alpha", &["0", "0.5", "1"]),
    ] {
        let svg = read(stem);
        assert!(has_text(&svg, "CLIP-Adapter, 16-shot"), "{stem}");
        for t in ticks {
            assert!(has_text(&svg, t), "{stem}: no tick {t}");
        }
        for (i, d) in DATASETS.iter().enumerate() {
            has_series(&svg, d, clip_adapter::figure::style::palette(i));
        }
        has_series(&svg, "mean over datasets", clip_adapter::figure::style::INK);
    }

    // The Markdown: tables, gains and ablation tables (reduction 1 is best on both datasets).
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "![Test accuracy against shots per class](figures/accuracy_vs_shots.svg)",
        "### eurosat",
        "### Average over 2 datasets",
        "| eurosat | 16 | 40.75 | 54.75 | +14.00 |",
        "## Ablation: bottleneck width",
        "| D | **50.75 ± 0.25** | **65.75 ± 0.25** | **58.25** |",
        "## Ablation: residual ratio α",
        "figures/ablation_alpha.svg",
    ] {
        assert!(md.contains(needle), "no `{needle}` in {md}");
    }

    // The same rows give the same bytes.
    let first = snapshot(&out);
    ok(&cli_in(tmp.path(), &["report", "results"]));
    assert_eq!(snapshot(&out), first);
}

#[test]
fn published_numbers_of_the_backbone_are_faint_markers() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("published.csv");
    std::fs::write(
        &csv,
        "method,backbone,dataset,shots,accuracy,source\n\
         CLIP-Adapter,RN50,EuroSAT,16,63.5,paper\n\
         CLIP-Adapter,RN50,EuroSAT,4,58.1,paper\n\
         CLIP-Adapter,ViT-B/16,EuroSAT,8,90.0,paper\n",
    )
    .unwrap();
    let published = Published::read(&csv).unwrap().for_backbone("RN50");
    let options = ReportOptions {
        published,
        backbone: Some("RN50".into()),
        ..ReportOptions::default()
    };
    let files = write_report(tmp.path(), &rows(), &options).unwrap();
    assert_eq!(files.report, tmp.path().join("report.md"));
    let svg = std::fs::read_to_string(tmp.path().join("figures/accuracy_vs_shots.svg")).unwrap();
    let faint_ca = format!(
        "stroke=\"{}\"",
        hex(faint(method_style("clip-adapter").colour, 0.45))
    );
    // Two RN50 points in the eurosat panel; the average needs all 11 benchmarks.
    assert_eq!(elements(&svg, "circle", &faint_ca).len(), 2, "{faint_ca}");
    assert!(has_text(&svg, "published (RN50)"));
    let md = std::fs::read_to_string(&files.report).unwrap();
    assert!(
        md.contains("(63.50)") && md.contains("Published RN50 numbers"),
        "{md}"
    );
}

#[test]
fn bad_folders_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let nothing_written = |d: &Path| {
        assert!(!d.join("report.md").exists() && !d.join("figures").exists());
    };

    let out = cli_in(dir, &["report", "missing"]);
    assert_fails_with(&out, &["missing", "no such results folder"]);
    assert!(!dir.join("missing").exists());

    std::fs::create_dir(dir.join("none")).unwrap();
    assert_fails_with(
        &cli_in(dir, &["report", "none"]),
        &["results.csv", "not found"],
    );
    nothing_written(&dir.join("none"));

    std::fs::create_dir(dir.join("foreign")).unwrap();
    std::fs::write(dir.join("foreign/results.csv"), "name,score\nx,1\n").unwrap();
    assert_fails_with(
        &cli_in(dir, &["report", "foreign"]),
        &[
            "foreign/results.csv",
            "`name,score`",
            "expected `method,options",
        ],
    );
    nothing_written(&dir.join("foreign"));

    std::fs::create_dir(dir.join("empty")).unwrap();
    write_csv(&dir.join("empty/results.csv"), &[]).unwrap();
    assert_fails_with(
        &cli_in(dir, &["report", "empty"]),
        &["holds no results rows"],
    );
    nothing_written(&dir.join("empty"));

    // A --reported file that is not one is refused before anything is written.
    let good = folder(dir);
    std::fs::write(dir.join("bad.csv"), "a,b\n1,2\n").unwrap();
    assert_fails_with(
        &cli_in(dir, &["report", "results", "--reported", "bad.csv"]),
        &["bad.csv", "expected columns method,backbone"],
    );
    nothing_written(&good);
}
