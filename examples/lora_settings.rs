//! CLIP-LoRA settings on the demo's tasks: the measurements behind the demo's CLIP-LoRA setting
//! (docs/demo.md, "CLIP-LoRA, demo-sized: our setting"). Runs zero-shot and one CLIP-LoRA per
//! setting through the demo's grids (seeds 1-3; few-shot on the demo's CLIP-LoRA tasks among
//! TASKS, base-to-new when its task is one of them) and prints each method's mean test accuracy
//! per task, the base-to-new rows, and the fits' summed seconds.
//!
//! ```sh
//! cargo run --release --example lora_settings -- new_colours,textures 16 10,0.002 5,0.004
//! ```
//!
//! A setting is `ITERS_PER_SHOT,RATE[,POSITION[,VIEWS]]`; the updates are the demo's (rank 2 on
//! q, k, v of the text tower: the world model's image tower is a ResNet), in every layer unless
//! `POSITION` says otherwise (`half-up`, or `last:1`: our variant, `--lora-last 1`), on fresh
//! crops at every step unless `VIEWS` fixes that many per image (our `--lora-views`).

use anyhow::{bail, Context, Result};
use clip_adapter::clip::train::lora::LoraOptions;
use clip_adapter::demo::{all_methods, demo_clip_lora, run_demo, DemoMethod, DemoOptions};
use clip_adapter::experiment::Protocol;
use clip_adapter::methods::clip_lora::ClipLoraOptions;
use clip_adapter::methods::Method;

fn setting(text: &str) -> Result<ClipLoraOptions> {
    let parts: Vec<&str> = text.split(',').collect();
    let (iters, lr, position, views) = match parts[..] {
        [iters, lr] => (iters, lr, None, None),
        [iters, lr, position] => (iters, lr, Some(position), None),
        [iters, lr, position, views] => (iters, lr, Some(position), Some(views)),
        _ => bail!(
            "setting `{text}`: expected ITERS_PER_SHOT,RATE[,POSITION[,VIEWS]], e.g. 10,0.002"
        ),
    };
    let views = match views {
        Some(v) => Some(
            v.parse()
                .with_context(|| format!("views `{v}` in `{text}`"))?,
        ),
        None => None,
    };
    let base = demo_clip_lora();
    let position = match position {
        Some(p) => p
            .parse()
            .with_context(|| format!("position `{p}` in `{text}`"))?,
        None => base.lora.position,
    };
    Ok(ClipLoraOptions {
        lora: LoraOptions {
            position,
            ..base.lora
        },
        iters_per_shot: (iters.parse()).with_context(|| format!("iters `{iters}` in `{text}`"))?,
        lr: lr
            .parse()
            .with_context(|| format!("rate `{lr}` in `{text}`"))?,
        views,
        ..base
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tasks, shots, settings @ ..] = &args[..] else {
        bail!("usage: lora_settings TASKS SHOTS SETTING... (see the example's documentation)");
    };
    let shots: usize = shots
        .parse()
        .with_context(|| format!("shot count `{shots}`"))?;
    let methods: Vec<DemoMethod> = (all_methods().into_iter())
        .filter(|m| m.label == "zero-shot")
        .collect();
    let mut lora = Vec::new();
    for s in settings {
        lora.push(DemoMethod {
            label: format!("clip-lora[{s}]"),
            options: String::new(),
            method: Method::new(setting(s)?),
        });
    }
    let out = tempfile::tempdir()?;
    let o = DemoOptions {
        out: out.path().to_path_buf(),
        shots: vec![shots],
        tasks: tasks.split(',').map(String::from).collect(),
        methods: methods.clone(),
        ablations: Vec::new(),
        lora: lora.clone(),
        tsne: false,
        ..DemoOptions::default()
    };
    let report = run_demo(&o, &mut |_| {})?;
    for m in methods.iter().chain(&lora) {
        let mut line = format!("{:<24}", m.label);
        let mut accuracies = Vec::new();
        for (task, _, _) in &report.tasks {
            if let Some((a, _)) = report.cell(task, &m.label, shots) {
                accuracies.push(a);
                line.push_str(&format!(" {task}={a:.2}"));
            }
        }
        let of = |p: Protocol| {
            (report.rows.iter()).filter(move |r| r.method == m.label && r.protocol == p)
        };
        let seconds: f64 = of(Protocol::FewShot).map(|r| r.train_seconds).sum();
        let mean = accuracies.iter().sum::<f32>() / accuracies.len().max(1) as f32;
        line.push_str(&format!(" mean={mean:.2} seconds={seconds:.2}"));
        let b2n: Vec<_> = of(Protocol::BaseToNew).collect();
        if !b2n.is_empty() {
            let n = b2n.len() as f32;
            let base = b2n.iter().map(|r| r.test_accuracy).sum::<f32>() / n;
            let new = b2n
                .iter()
                .map(|r| r.new_accuracy.unwrap_or(f32::NAN))
                .sum::<f32>()
                / n;
            let secs: f64 = b2n.iter().map(|r| r.train_seconds).sum();
            line.push_str(&format!(
                " | base-to-new base={base:.2} new={new:.2} seconds={secs:.2}"
            ));
        }
        println!("{line}");
    }
    Ok(())
}
