//! The demo with the embedded model runs offline end to end, and the paper's story holds on
//! the 16-shot column (all tasks, seeds 1-3, zero-shot, the visual CLIP-Adapter and its α
//! ablation): zero-shot well above chance on the tasks close to pretraining, CLIP-Adapter above
//! zero-shot on average, a larger gain on the far tasks than on the close ones, and on the far
//! tasks a fixed α above 0 better than α = 0 (zero-shot). The command writes the results as CSV
//! and the folder's report (Markdown, figures as SVG and PNG).

use clip_adapter::demo::{ablation_methods, all_methods, run_demo, DemoOptions};
use clip_adapter::figure::lines::{PANEL_H, PANEL_W};
use clip_adapter::world::tasks::{demo_tasks, Gap};

#[test]
fn demo_at_16_shots_tells_the_papers_story() {
    let out = tempfile::tempdir().unwrap();
    let o = DemoOptions {
        out: out.path().to_path_buf(),
        shots: vec![16],
        methods: all_methods()
            .into_iter()
            .filter(|m| m.label == "zero-shot" || m.label == "clip-adapter")
            .collect(),
        ablations: ablation_methods()
            .into_iter()
            .filter(|m| m.options.starts_with("alpha="))
            .collect(),
        ..DemoOptions::default()
    };
    let alphas: Vec<String> = o.ablations.iter().map(|m| m.options.clone()).collect();
    assert_eq!(alphas.len(), 6, "{alphas:?}");
    let report = run_demo(&o, &mut |_| {}).unwrap();
    let tasks = demo_tasks();
    assert_eq!(report.rows.len(), tasks.len() * o.seeds.len() * (2 + 6));
    let acc = |task: &str, method: &str| report.cell(task, method, 16).unwrap().0;
    let mean = |v: Vec<f32>| v.iter().sum::<f32>() / v.len() as f32;

    // Zero-shot transfer: above chance on every close task, and well above on average.
    let close: Vec<_> = tasks.iter().filter(|t| t.gap == Gap::Close).collect();
    for t in &close {
        let chance = 100.0 / t.classes.len() as f32;
        assert!(
            acc(t.name, "zero-shot") > chance + 5.0,
            "{}: zero-shot {:.1}% vs chance {chance:.1}%",
            t.name,
            acc(t.name, "zero-shot")
        );
    }
    let zs_close = mean(close.iter().map(|t| acc(t.name, "zero-shot")).collect());
    let chance_close = mean(
        close
            .iter()
            .map(|t| 100.0 / t.classes.len() as f32)
            .collect(),
    );
    assert!(
        zs_close > 2.0 * chance_close,
        "close tasks: zero-shot {zs_close:.1}% vs chance {chance_close:.1}%"
    );

    // CLIP-Adapter above zero-shot on average over all tasks.
    let all = |m: &str| mean(tasks.iter().map(|t| acc(t.name, m)).collect());
    let (zs, ca) = (all("zero-shot"), all("clip-adapter"));
    assert!(
        ca > zs,
        "mean over tasks: CLIP-Adapter {ca:.1}% vs zero-shot {zs:.1}%"
    );

    // The gain grows with the domain gap.
    let gain = |gap: Gap| {
        report.gap_mean(gap, "clip-adapter", 16).unwrap()
            - report.gap_mean(gap, "zero-shot", 16).unwrap()
    };
    let (close_gain, far_gain) = (gain(Gap::Close), gain(Gap::Far));
    assert!(
        far_gain > close_gain,
        "gain over zero-shot: far {far_gain:+.1} vs close {close_gain:+.1}"
    );

    // The α ablation (Table 2): on the far tasks the best fixed α is above 0, and better than
    // α = 0 (the zero-shot classifier) on their mean.
    let far: Vec<_> = tasks.iter().filter(|t| t.gap == Gap::Far).collect();
    let at_alpha = |task: &str, options: &str| {
        let v: Vec<f32> = (report.rows.iter())
            .filter(|r| r.dataset == task && r.options == options)
            .map(|r| r.test_accuracy)
            .collect();
        v.iter().sum::<f32>() / v.len() as f32
    };
    let far_curve: Vec<f32> = (alphas.iter())
        .map(|a| mean(far.iter().map(|t| at_alpha(t.name, a)).collect()))
        .collect();
    let best = (0..far_curve.len())
        .max_by(|&a, &b| far_curve[a].total_cmp(&far_curve[b]))
        .unwrap();
    assert_eq!(alphas[0], "alpha=0");
    assert!(
        best > 0 && far_curve[best] > far_curve[0] + 1.0,
        "far tasks, accuracy against α {alphas:?}: {far_curve:?}"
    );
    for t in &far {
        let curve: Vec<f32> = alphas.iter().map(|a| at_alpha(t.name, a)).collect();
        let top = curve.iter().copied().fold(f32::MIN, f32::max);
        assert!(top > curve[0], "{}: {curve:?}", t.name);
    }

    // Fig. 5: on the far task the adapted features separate the classes better, as numbers.
    let tsne = report.tsne.as_ref().expect("a far task was run");
    assert_eq!(tsne.task, "new_colours");
    let (before, after) = (&tsne.maps.before, &tsne.maps.after);
    assert!(
        after.features.knn_accuracy > before.features.knn_accuracy
            && after.features.silhouette > before.features.silhouette,
        "5-NN / silhouette before {:?}, after {:?}",
        before.features,
        after.features
    );

    let md = report.markdown();
    assert!(md.contains("### shapes") && md.contains("| clip-adapter |"));
    assert!(md.contains("t-SNE of `new_colours`"), "{md}");
    assert!(md.contains("scaled by 100 / logit scale"), "{md}");
    assert_eq!(report.csv().unwrap().lines().count(), report.rows.len() + 1);

    // The report: a panel per task, per gap's mean and the mean of all; the gap groups.
    let md = report.markdown();
    assert!(md.contains("### Mean over the far tasks"), "{md}");
    assert!(
        md.contains("## Gain of CLIP-Adapter over zero-shot CLIP"),
        "{md}"
    );
    let files =
        clip_adapter::report::write_report(out.path(), &report.rows, &report.report_options())
            .unwrap();
    let svg = std::fs::read_to_string(out.path().join("figures/accuracy_vs_shots.svg")).unwrap();
    for (task, gap) in tasks.iter().map(|t| (t.name, t.gap)) {
        assert!(
            svg.contains(&format!("\n{task} ({})\n", gap.as_str())),
            "{task}"
        );
    }
    assert!(svg.contains("\nmean far\n") && svg.contains("\nmean all\n"));
    assert_eq!(
        files.figures.len(),
        6,
        "accuracy, gain and α ablation figures: {:?}",
        files.figures
    );
    let ablation = std::fs::read_to_string(out.path().join("figures/ablation_alpha.svg")).unwrap();
    assert!(ablation.contains("new_colours"), "{ablation}");
}

#[test]
fn demo_command_writes_markdown_csv_and_png() {
    // One task, one draw: a fraction of a second.
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().display().to_string();
    let run = crate::common::clip_adapter(&[
        "demo", "--quiet", "--out", &dir, "--tasks", "colours", "--shots", "1,4", "--seeds", "1",
    ]);
    assert!(
        run.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("figures"), "{stdout}");
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("### colours"));
    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    // Two shot counts of every method, and the ablations at the larger one.
    assert_eq!(
        csv.lines().count(),
        1 + 2 * all_methods().len() + ablation_methods().len()
    );
    // CoOp is in the grid, demo-sized: its rows, the report says so, and a fit is quick.
    let coop: Vec<&str> = csv.lines().filter(|l| l.starts_with("coop,")).collect();
    assert_eq!(coop.len(), 2, "{csv}");
    let seconds_at = (csv.lines().next().unwrap().split(','))
        .position(|c| c == "train_seconds")
        .unwrap();
    for row in &coop {
        let seconds: f64 = row.split(',').nth(seconds_at).unwrap().parse().unwrap();
        assert!(
            seconds < 5.0,
            "a demo CoOp fit takes seconds at most: {row}"
        );
    }
    assert!(md.contains("| coop |"), "{md}");
    assert!(md.contains("CoOp: demo-sized"), "{md}");
    // One task panel and the legend beside it; the variants have their own figure.
    let png = image::open(out.path().join("figures/accuracy_vs_shots.png")).unwrap();
    assert!(
        png.width() > PANEL_W && png.height() >= PANEL_H,
        "{}x{}",
        png.width(),
        png.height()
    );
    for stem in ["gain_over_zero_shot", "clip_adapter_variants"] {
        let svg = std::fs::read_to_string(out.path().join(format!("figures/{stem}.svg"))).unwrap();
        assert!(svg.contains("colours"), "{stem}");
    }
}
