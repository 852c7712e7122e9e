//! `clip-adapter demo`: the command line of [`clip_adapter::demo`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::builder::PossibleValuesParser;
use clap::Args;
use clip_adapter::demo::{run_demo, task_names, DemoEvent, DemoOptions};
use clip_adapter::fsutil::write_atomic;

use crate::args::{positive, trimmed};
use crate::output::Progress;

#[derive(Args)]
pub struct DemoArgs {
    /// Where the generated tasks (tasks/), results.md, results.csv and accuracy_vs_shots.png go.
    #[arg(long, value_name = "DIR", default_value = "clip-adapter-demo")]
    pub out: PathBuf,

    /// The model [default: tiny-world-clip, embedded in the binary].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,

    /// Shot counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16", value_parser = positive)]
    pub shots: Vec<usize>,

    /// Seeds of the few-shot draws (and of the trained methods).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3", value_parser = trimmed::<u64>)]
    pub seeds: Vec<u64>,

    /// Only these tasks, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_parser = PossibleValuesParser::new(task_names()))]
    pub tasks: Vec<String>,
}

pub fn run(a: DemoArgs, progress: &Progress) -> Result<()> {
    let defaults = DemoOptions::default();
    let options = DemoOptions {
        model_dir: a.model.unwrap_or(defaults.model_dir.clone()),
        out: a.out.clone(),
        shots: a.shots,
        seeds: a.seeds,
        tasks: a.tasks,
        ..defaults
    };
    let mut bar = None;
    let report = run_demo(&options, &mut |event| match event {
        DemoEvent::TaskReady { .. } => {}
        DemoEvent::Fitted { done, total } => {
            let b = bar.get_or_insert_with(|| progress.bar("fitting", total));
            b.set_position(done as u64);
        }
    })
    .with_context(|| {
        format!(
            "running the demo with the model in {}",
            options.model_dir.display()
        )
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let markdown = report.markdown();
    write_atomic(&a.out.join("results.md"), markdown.as_bytes())?;
    let csv = report.csv().context("writing the results as CSV")?;
    write_atomic(&a.out.join("results.csv"), csv.as_bytes())?;
    let png = report.png().context("drawing the accuracy-vs-shots plot")?;
    write_atomic(&a.out.join("accuracy_vs_shots.png"), &png)?;
    println!("{markdown}");
    println!(
        "Written: {}, {} and {}",
        a.out.join("results.md").display(),
        a.out.join("results.csv").display(),
        a.out.join("accuracy_vs_shots.png").display()
    );
    Ok(())
}
