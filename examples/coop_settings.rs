//! CoOp settings on the demo's tasks: the measurements behind the demo's CoOp setting
//! (docs/demo.md, "CoOp, demo-sized: our setting"). Runs zero-shot and one CoOp per setting
//! through the demo's grid (seeds 1-3, the demo's learning-rate scaling) and prints each
//! method's mean test accuracy per task, their mean, and the fits' summed seconds.
//!
//! ```sh
//! cargo run --release --example coop_settings -- \
//!     sketches,textures,new_shapes,new_colours 16 random,0.002,20,32 prompt,0.01,20,32
//! ```
//!
//! A setting is `CONTEXT,RATE,EPOCHS,BATCH`: CONTEXT `random` (4 vectors) or `prompt` (started
//! from "a photo of a"), RATE before the demo's logit-scale factor.

use anyhow::{bail, Context, Result};
use clip_adapter::demo::{all_methods, run_demo, DemoMethod, DemoOptions, DEMO_COOP_CTX_INIT};
use clip_adapter::methods::coop::CoopOptions;
use clip_adapter::methods::Method;

fn setting(text: &str) -> Result<CoopOptions> {
    let parts: Vec<&str> = text.split(',').collect();
    let [context, lr, epochs, batch] = parts[..] else {
        bail!("setting `{text}`: expected CONTEXT,RATE,EPOCHS,BATCH, e.g. prompt,0.01,20,32");
    };
    let ctx_init = match context {
        "random" => None,
        "prompt" => Some(DEMO_COOP_CTX_INIT.to_string()),
        other => bail!("context `{other}` in `{text}`: expected `random` or `prompt`"),
    };
    Ok(CoopOptions {
        n_ctx: 4,
        ctx_init,
        lr: lr
            .parse()
            .with_context(|| format!("rate `{lr}` in `{text}`"))?,
        epochs: Some((epochs.parse()).with_context(|| format!("epochs `{epochs}` in `{text}`"))?),
        batch_size: (batch.parse()).with_context(|| format!("batch `{batch}` in `{text}`"))?,
        ..CoopOptions::default()
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tasks, shots, settings @ ..] = &args[..] else {
        bail!("usage: coop_settings TASKS SHOTS SETTING... (see the example's documentation)");
    };
    let shots = (shots.split(','))
        .map(|s| s.parse().with_context(|| format!("shot count `{s}`")))
        .collect::<Result<Vec<usize>>>()?;
    let mut methods: Vec<DemoMethod> = (all_methods().into_iter())
        .filter(|m| m.label == "zero-shot")
        .collect();
    for s in settings {
        methods.push(DemoMethod {
            label: format!("coop[{s}]"),
            options: String::new(),
            method: Method::new(setting(s)?),
        });
    }
    let out = tempfile::tempdir()?;
    let o = DemoOptions {
        out: out.path().to_path_buf(),
        shots: shots.clone(),
        tasks: tasks.split(',').map(String::from).collect(),
        methods: methods.clone(),
        ablations: Vec::new(),
        lora: Vec::new(),
        tsne: false,
        generalisation: false,
        ..DemoOptions::default()
    };
    let report = run_demo(&o, &mut |_| {})?;
    for &k in &shots {
        for m in &methods {
            let mut line = format!("{k:>2} {:<28}", m.label);
            let mut accuracies = Vec::new();
            for (task, _, _) in &report.tasks {
                let (a, _) = (report.cell(task, &m.label, k))
                    .with_context(|| format!("no rows of {} on {task}", m.label))?;
                accuracies.push(a);
                line.push_str(&format!(" {task}={a:.1}"));
            }
            let seconds: f64 = (report.rows.iter())
                .filter(|r| r.method == m.label && r.shots == k)
                .map(|r| r.train_seconds)
                .sum();
            let mean = accuracies.iter().sum::<f32>() / accuracies.len() as f32;
            println!("{line} mean={mean:.2} seconds={seconds:.2}");
        }
    }
    Ok(())
}
