//! The demo on a reduced grid with the embedded model: it runs offline end to end, and what
//! it shows holds. Only what is true of the shipped checkpoint is asserted (docs/demo.md has
//! the full table): zero-shot is well above chance on the tasks close to pretraining.

use clip_adapter::demo::{all_methods, run_demo, DemoOptions};
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
}
