//! `clip-adapter demo`: the command line of [`clip_adapter::demo`].

use std::path::PathBuf;

use anyhow::Result;
use clap::builder::PossibleValuesParser;
use clap::Args;
use clip_adapter::demo::{task_names, DemoEvent, DemoOptions};
use clip_adapter::runner;

use crate::output::Progress;
use crate::shared::{positive, trimmed};

#[derive(Args)]
pub struct DemoArgs {
    /// Where the generated tasks (tasks/), results.csv and the report (report.md, figures/:
    /// accuracy vs shots, gains, CLIP-Adapter's variants, its α and bottleneck ablations, the
    /// t-SNE of a far task as CLIP, CoOp, CLIP-Adapter with α = 1 and CLIP-Adapter score it;
    /// SVG and PNG; base-to-new on new_colours and domain generalisation from colours to its
    /// sketched versions at the largest shot count) go.
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
    let outcome = runner::demo(&options, &mut |event| match event {
        DemoEvent::TaskReady { .. } => {}
        DemoEvent::Fitted { done, total } => {
            let b = bar.get_or_insert_with(|| progress.bar("fitting", total));
            b.set_position(done as u64);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let outcome = outcome?;
    crate::output::outln!("{}", outcome.markdown);
    crate::output::outln!(
        "{} fits in {:.1} s. Written: {}, {} and {} figures in {}",
        outcome.report.rows.len(),
        outcome.report.seconds,
        outcome.results_csv.display(),
        outcome.files.report.display(),
        outcome.files.figures.len() / 2 + usize::from(outcome.tsne_figure),
        outcome.figures_dir.display()
    );
    Ok(())
}
