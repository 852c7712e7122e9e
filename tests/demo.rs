//! The demo with the embedded model runs offline end to end, and the paper's story holds on
//! the 16-shot column (all tasks, seeds 1-3, zero-shot, CoOp, the visual CLIP-Adapter and its
//! α ablation): zero-shot well above chance on the tasks close to pretraining, CoOp and
//! CLIP-Adapter above zero-shot, CoOp clearly so on the far tasks, a larger gain on the far
//! tasks than on the close ones, and on the far tasks a fixed α above 0 better than α = 0
//! (zero-shot); the four heads of Fig. 5 mapped, CoOp's panel its own; base-to-new and domain
//! generalisation run beside. The command writes the results as CSV and the folder's report
//! (Markdown, figures as SVG and PNG).

use clip_adapter::demo::{
    ablation_methods, all_methods, lora_methods, run_demo, DemoOptions, ADAPTER_PANEL,
    BASE_TO_NEW_TASK, CLIP_PANEL, COOP_PANEL, DEMO_LORA_ITERS_PER_SHOT, DOMAIN_METHODS, LORA_TASKS,
    NO_RESIDUAL_PANEL,
};
use clip_adapter::experiment::Protocol;
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
            .filter(|m| ["zero-shot", "clip-adapter", "coop"].contains(&m.label.as_str()))
            .collect(),
        ablations: ablation_methods()
            .into_iter()
            .filter(|m| m.options.starts_with("alpha="))
            .collect(),
        // Its own test below.
        lora: Vec::new(),
        ..DemoOptions::default()
    };
    let alphas: Vec<String> = o.ablations.iter().map(|m| m.options.clone()).collect();
    assert_eq!(alphas.len(), 6, "{alphas:?}");
    let report = run_demo(&o, &mut |_| {}).unwrap();
    let tasks = demo_tasks();
    let few_shot = report.few_shot_rows();
    assert_eq!(few_shot.len(), tasks.len() * o.seeds.len() * (3 + 6));
    // Base-to-new and domain generalisation: the three methods, one row per seed; the domain
    // run's fits each give a row for the source and one per target (two).
    let of = |p: Protocol| report.rows.iter().filter(|r| r.protocol == p).count();
    assert_eq!(of(Protocol::BaseToNew), 3 * o.seeds.len());
    assert_eq!(of(Protocol::Domain), 3 * o.seeds.len() * 3);
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

    // CoOp, with the demo's setting, learns: clearly above zero-shot on the far tasks.
    let (coop_far, zs_far) = (
        report.gap_mean(Gap::Far, "coop", 16).unwrap(),
        report.gap_mean(Gap::Far, "zero-shot", 16).unwrap(),
    );
    assert!(
        coop_far > zs_far + 3.0,
        "far tasks at 16 shots: CoOp {coop_far:.2}% vs zero-shot {zs_far:.2}%"
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

    // Fig. 5, its four panels: each head's class scores of the far task's test set (their
    // numbers are checked against the heads in the library's tests). CoOp's learned prompts
    // give a panel of their own, and CoOp and the adapter put more images on their class.
    let tsne = report.tsne.as_ref().expect("a far task was run");
    assert_eq!(tsne.task, "new_colours");
    let names: Vec<&str> = tsne.maps.panels.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [CLIP_PANEL, COOP_PANEL, NO_RESIDUAL_PANEL, ADAPTER_PANEL]
    );
    let panel = |name: &str| tsne.maps.panel(name).unwrap();
    let (clip, coop, adapter) = (panel(CLIP_PANEL), panel(COOP_PANEL), panel(ADAPTER_PANEL));
    assert_ne!(clip.view.features, coop.view.features);
    assert_ne!(clip.view.coordinates, coop.view.coordinates);
    assert!(
        adapter.accuracy > clip.accuracy && coop.accuracy > clip.accuracy,
        "accuracy: CLIP {}, CoOp {}, CLIP-Adapter {}",
        clip.accuracy,
        coop.accuracy,
        adapter.accuracy
    );
    // In the paper's space, the image features each head scores, the adapted features
    // separate the classes better than CLIP's.
    let (before, after) = (&clip.image_features, &adapter.image_features);
    assert!(
        after.knn_accuracy > before.knn_accuracy && after.silhouette > before.silhouette,
        "5-NN / silhouette of the features: CLIP {before:?}, CLIP-Adapter {after:?}"
    );
    assert_eq!(tsne.maps.chart().panels.len(), 4);

    // Base-to-new on textures: every method scores the new classes (a texture family never
    // seen) without an image of them, and CoOp, its prompts fitted to the base classes, loses
    // on the new ones against the hand-written prompt (CoCoOp's finding).
    let b2n = |m: &str| report.base_to_new(m).unwrap();
    for m in ["zero-shot", "coop", "clip-adapter"] {
        let r = b2n(m);
        assert!(
            r.new.is_finite() && r.new > 0.0 && r.h.is_finite(),
            "{m}: {r:?}"
        );
    }
    let (coop, zs) = (b2n("coop"), b2n("zero-shot"));
    assert!(
        coop.new < zs.new && coop.h < zs.h,
        "new classes: CoOp {coop:?} vs zero-shot {zs:?}"
    );

    // Domain generalisation from colours: its classes in the sketch style pretraining never
    // drew, alone and with new textures and noise; the shift costs every method accuracy.
    for m in ["zero-shot", "coop", "clip-adapter"] {
        let source = report.domain(m, "colours").unwrap();
        for target in ["sketched_colours", "sketches"] {
            let shifted = report.domain(m, target).unwrap();
            assert!(
                shifted < source,
                "{m}: colours {source:.1}% vs {target} {shifted:.1}%"
            );
        }
    }
    assert_eq!(DOMAIN_METHODS.len(), 4);

    let md = report.markdown();
    assert!(md.contains("### shapes") && md.contains("| clip-adapter |"));
    assert!(md.contains("t-SNE of `new_colours`"), "{md}");
    assert!(
        md.contains("Base-to-new") && md.contains(BASE_TO_NEW_TASK),
        "{md}"
    );
    assert!(md.contains("## Domain generalisation from colours"), "{md}");
    assert!(md.contains("scaled by 100 / logit scale"), "{md}");
    assert_eq!(report.csv().unwrap().lines().count(), report.rows.len() + 1);
    // Base-to-new and domain rows stay out of the few-shot tables and figures.
    assert!(!md.contains("### sketched_colours"), "{md}");

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
    // Two shot counts of every method, the ablations at the larger one, and, as colours is the
    // domain run's source, its methods' rows on colours and the two shifted targets there.
    assert_eq!(
        csv.lines().count(),
        1 + 2 * all_methods().len() + ablation_methods().len() + 3 * DOMAIN_METHODS.len()
    );
    // CoOp is in the grid, demo-sized: its rows, the report says so, and a fit is quick.
    let coop: Vec<&str> = csv.lines().filter(|l| l.starts_with("coop,")).collect();
    assert_eq!(coop.len(), 2 + 3, "{csv}");
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
    assert!(md.contains("CoOp: our demo-sized setting"), "{md}");
    assert!(md.contains("sketched_colours"), "{md}");
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

/// CLIP-LoRA in the demo: its demo-sized setting trains the text tower of the world model
/// (whose image tower is a ResNet) on the images the demo wrote, at the largest shot count of
/// its tasks, few-shot and base-to-new (its new classes through the adapted text tower).
#[test]
fn demo_fits_clip_lora_on_its_tasks_images() {
    let out = tempfile::tempdir().unwrap();
    let o = DemoOptions {
        out: out.path().to_path_buf(),
        shots: vec![1, 2],
        seeds: vec![1],
        tasks: LORA_TASKS.iter().map(|t| t.to_string()).collect(),
        methods: all_methods()
            .into_iter()
            .filter(|m| m.label == "zero-shot")
            .collect(),
        ablations: Vec::new(),
        lora: lora_methods(),
        tsne: false,
        ..DemoOptions::default()
    };
    let report = run_demo(&o, &mut |_| {}).unwrap();
    let lora: Vec<_> = (report.rows.iter())
        .filter(|r| r.method == "clip-lora")
        .collect();
    // Few-shot on each of its tasks at 2 shots (not 1), and base-to-new on its task.
    assert_eq!(lora.len(), LORA_TASKS.len() + 1, "{lora:?}");
    for r in &lora {
        assert_eq!(r.shots, 2);
        assert!((0.0..=100.0).contains(&r.test_accuracy), "{r:?}");
        let steps = 2 * DEMO_LORA_ITERS_PER_SHOT;
        assert_eq!(r.chosen, format!("steps={steps}"), "{r:?}");
    }
    let b2n = lora
        .iter()
        .find(|r| r.protocol == Protocol::BaseToNew)
        .unwrap();
    assert_eq!(b2n.dataset, BASE_TO_NEW_TASK);
    assert!(
        b2n.new_accuracy.is_some_and(|a| (0.0..=100.0).contains(&a)),
        "{b2n:?}"
    );
    let md = report.markdown();
    assert!(md.contains("CLIP-LoRA: our demo-sized setting"), "{md}");
    // Its crops are seeded by each image's path within its task, not by where the demo
    // writes: another folder gives the same rows.
    let elsewhere = tempfile::tempdir().unwrap();
    let again = run_demo(
        &DemoOptions {
            out: elsewhere.path().join("deeper"),
            ..o
        },
        &mut |_| {},
    )
    .unwrap();
    let accuracies = |rows: &[clip_adapter::experiment::ResultRow]| -> Vec<(f32, Option<f32>)> {
        (rows.iter())
            .filter(|r| r.method == "clip-lora")
            .map(|r| (r.test_accuracy, r.new_accuracy))
            .collect()
    };
    assert_eq!(accuracies(&again.rows), accuracies(&report.rows));
}
