//! The demo on a reduced grid with the embedded model: it runs offline end to end, and what
//! it shows holds. Only what is true of the shipped checkpoint is asserted (docs/demo.md has
//! the full table): zero-shot is well above chance on the tasks close to pretraining. The
//! command writes the report as Markdown, CSV and an accuracy-vs-shots PNG.

use clip_adapter::demo::{all_methods, method_style, run_demo, DemoOptions};
use clip_adapter::plot::{PANEL_H, PANEL_W};
use clip_adapter::world::tasks::{demo_tasks, Gap, TaskSizes};

#[test]
fn demo_on_a_reduced_grid_shows_zero_shot_transfer_on_close_tasks() {
    let out = tempfile::tempdir().unwrap();
    let o = DemoOptions {
        out: out.path().to_path_buf(),
        shots: vec![16],
        seeds: vec![1],
        sizes: TaskSizes {
            train: 16,
            val: 4,
            test: 24,
        },
        methods: all_methods()
            .into_iter()
            .filter(|m| m.label == "zero-shot" || m.label == "clip-adapter")
            .collect(),
        ..DemoOptions::default()
    };
    let report = run_demo(&o, &mut |_| {}).unwrap();
    let tasks = demo_tasks();
    assert_eq!(report.rows.len(), tasks.len() * 2);
    let close: Vec<_> = tasks.iter().filter(|t| t.gap == Gap::Close).collect();
    let mut sum = (0.0, 0.0);
    for t in &close {
        let chance = 100.0 / t.classes.len() as f32;
        let (zs, _) = report.cell(t.name, "zero-shot", 16).unwrap();
        // Shapes are the hard close task for this small model (about 1.6x chance).
        assert!(
            zs > 1.3 * chance,
            "{}: zero-shot {zs:.1}% vs chance {chance:.1}%",
            t.name
        );
        sum = (sum.0 + zs, sum.1 + chance);
    }
    assert!(
        sum.0 > 3.0 * sum.1,
        "close tasks: zero-shot {:.1} vs chance {:.1} (sums)",
        sum.0,
        sum.1
    );
    let md = report.markdown();
    assert!(md.contains("### shapes") && md.contains("| clip-adapter |"));
    assert_eq!(report.csv().lines().count(), report.rows.len() + 1);

    // The plot: a panel per task and per gap's mean; zero-shot, the reference drawn last, has
    // its marker where its mean accuracy maps.
    let figure = report.plot();
    assert_eq!(figure.panels.len(), tasks.len() + 2);
    assert_eq!(figure.panels[0].title, format!("{} (close)", tasks[0].name));
    let png = image::load_from_memory(&report.png().unwrap()).unwrap();
    assert_eq!((png.width(), png.height()), figure.size());
    let png = png.to_rgb8();
    let axes = figure.axes(0).unwrap();
    let (acc, _) = report.cell(tasks[0].name, "zero-shot", 16).unwrap();
    let (x, y) = axes.to_pixel(16.0, acc).unwrap();
    assert_eq!(
        png.get_pixel(x as u32, y as u32).0,
        method_style("zero-shot").0
    );
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
    assert!(stdout.contains("accuracy_vs_shots.png"), "{stdout}");
    let md = std::fs::read_to_string(out.path().join("results.md")).unwrap();
    assert!(md.contains("### colours"));
    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * all_methods().len());
    let png = image::open(out.path().join("accuracy_vs_shots.png")).unwrap();
    // One task panel, its gap's mean, the legend's cell.
    assert_eq!((png.width(), png.height()), (3 * PANEL_W, PANEL_H));
}
