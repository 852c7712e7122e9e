//! Downstream few-shot tasks drawn from the world, written in CoOp's on-disk layout (one
//! folder of PNGs per class and a `split_zhou_<task>.json`), so that the real pipeline —
//! `fewshot`, `extract`, `run`, the demo — reads them like any benchmark.
//!
//! Like the paper's 11 datasets, some tasks sit close to what the model was pretrained on
//! (zero-shot already works) and some far from it: a new drawing style under heavy noise, and
//! texture, shape and colour names the pretraining captions never contained.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::json;

use super::attributes::{Colour, Shape, Style, Texture};
use super::render::render;
use super::rng::WorldRng;
use super::scene::Domain;
use super::IMAGE_SIDE;
use crate::clip::error::{Error, Result};
use crate::data::{split_file, Dataset};

/// How far a task is from the pretraining distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// Same images and words as pretraining.
    Close,
    /// New image domain or class names never seen in pretraining.
    Far,
}

impl Gap {
    pub fn as_str(self) -> &'static str {
        match self {
            Gap::Close => "close",
            Gap::Far => "far",
        }
    }
}

/// One task: class names (CoOp style, `_` for spaces) and the region of the world each class
/// is drawn from.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub name: &'static str,
    pub gap: Gap,
    /// What differs from pretraining, for reports.
    pub about: &'static str,
    pub classes: Vec<(String, Domain)>,
}

/// Images per class in each split.
#[derive(Debug, Clone, Copy)]
pub struct TaskSizes {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

impl Default for TaskSizes {
    /// Enough for 16-shot draws, CoOp's 4-image validation draws and a stable test accuracy.
    fn default() -> Self {
        TaskSizes {
            train: 24,
            val: 6,
            test: 30,
        }
    }
}

fn with<F: Fn(&mut Domain)>(base: &Domain, f: F) -> Domain {
    let mut d = base.clone();
    f(&mut d);
    d
}

/// One class per colour (`red_shape`, ...), each drawn from `domain` in that colour only.
fn colour_classes(colours: &[Colour], domain: &Domain) -> Vec<(String, Domain)> {
    colours
        .iter()
        .map(|&c| {
            (
                format!("{}_shape", c.word()),
                with(domain, |d| d.colours = vec![c]),
            )
        })
        .collect()
}

/// The colours of sketched shapes: a new drawing style, a new texture family and heavy noise
/// at once, the "satellite photo" of this world.
fn sketches() -> TaskSpec {
    let far_domain = with(&Domain::pretraining(), |d| {
        d.styles = vec![Style::Sketch];
        d.textures = vec![Texture::Wavy, Texture::Brick, Texture::Grid];
        d.noise = (30.0, 45.0);
    });
    TaskSpec {
        name: "sketches",
        gap: Gap::Far,
        about: "the colour of sketched shapes (new style) on new textures under heavy noise",
        classes: colour_classes(&Colour::seen(), &far_domain),
    }
}

/// The demo's tasks, close ones first.
pub fn demo_tasks() -> Vec<TaskSpec> {
    let pre = Domain::pretraining();
    let seen_shapes = Shape::seen();
    vec![
        TaskSpec {
            name: "shapes",
            gap: Gap::Close,
            about: "the pretraining distribution, classify the shape",
            classes: seen_shapes
                .iter()
                .map(|&s| (s.word().to_string(), with(&pre, |d| d.shapes = vec![s])))
                .collect(),
        },
        TaskSpec {
            name: "colours",
            gap: Gap::Close,
            about: "the pretraining distribution, classify the colour",
            classes: colour_classes(&Colour::seen(), &pre),
        },
        TaskSpec {
            name: "counts",
            gap: Gap::Close,
            about: "the pretraining distribution, count the shapes",
            classes: (1..=3usize)
                .map(|n| {
                    (
                        format!("{}_shapes", super::attributes::COUNT_WORDS[n - 1]),
                        with(&pre, |d| d.counts = vec![n]),
                    )
                })
                .collect(),
        },
        sketches(),
        TaskSpec {
            name: "textures",
            gap: Gap::Far,
            about: "classify the background; 3 of 7 texture names never seen",
            classes: Texture::ALL
                .iter()
                .map(|&t| {
                    (
                        format!("{}_background", t.word()),
                        with(&pre, |d| d.textures = vec![t]),
                    )
                })
                .collect(),
        },
        TaskSpec {
            name: "new_shapes",
            gap: Gap::Far,
            about: "shapes whose names pretraining never saw",
            classes: Shape::ALL
                .iter()
                .filter(|s| !s.in_pretraining())
                .map(|&s| (s.word().to_string(), with(&pre, |d| d.shapes = vec![s])))
                .collect(),
        },
        TaskSpec {
            name: "new_colours",
            gap: Gap::Far,
            about: "classify the colour; 3 of 11 colours never drawn nor named",
            classes: colour_classes(Colour::ALL, &pre),
        },
    ]
}

/// The demo's domain shift: a source task and its classes drawn in other image domains, as
/// ImageNet's are in ImageNet-Sketch and the other variants. `sketched_colours` changes the
/// drawing style alone, to the sketch style pretraining never drew; `sketches` (a task of its
/// own too) adds the new textures and heavy noise. Each target names its classes as the
/// source does, so a head trained on the source scores them unchanged.
pub fn demo_domain_shift() -> (&'static str, Vec<TaskSpec>) {
    let sketched = with(&Domain::pretraining(), |d| d.styles = vec![Style::Sketch]);
    let targets = vec![
        TaskSpec {
            name: "sketched_colours",
            gap: Gap::Far,
            about: "the colours of `colours`, sketched (a style pretraining never drew)",
            classes: colour_classes(&Colour::seen(), &sketched),
        },
        sketches(),
    ];
    ("colours", targets)
}

/// Name of a task's split file.
pub fn split_file_name(task: &str) -> String {
    format!("split_zhou_{task}.json")
}

/// Writes `spec` under `root/<name>/` (class folders of PNGs + split file) and returns the
/// split file's path. Image `i` of class `c` in split `s` depends only on `(seed, task, c, s,
/// i)`.
pub fn write_task(spec: &TaskSpec, root: &Path, seed: u64, sizes: TaskSizes) -> Result<PathBuf> {
    let dir = root.join(spec.name);
    let task_seed = seed ^ super::name_hash(spec.name);
    let mut jobs = Vec::new();
    for (label, (class, _)) in spec.classes.iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).map_err(|e| Error::io(dir.join(class), e))?;
        for (split, n) in [
            ("train", sizes.train),
            ("val", sizes.val),
            ("test", sizes.test),
        ] {
            for i in 0..n {
                jobs.push((label, split, i));
            }
        }
    }
    let written: Vec<(usize, &str, String)> = jobs
        .par_iter()
        .map(|&(label, split, i)| {
            let (class, domain) = &spec.classes[label];
            let stream = (label as u64) << 40 | (split.len() as u64) << 32 | i as u64;
            let mut rng = WorldRng::for_item(task_seed, stream);
            let scene = domain.sample(&mut rng);
            let img = render(&scene, IMAGE_SIDE, &mut rng);
            let impath = format!("{class}/{split}_{i:04}.png");
            let path = dir.join(&impath);
            let unwritten = |why: String| crate::fsutil::WriteError {
                path: path.clone(),
                source: std::io::Error::other(why),
            };
            let buf = image::RgbImage::from_raw(IMAGE_SIDE, IMAGE_SIDE, img.into_raw())
                .ok_or_else(|| unwritten("the rendered image has the wrong size".into()))?;
            buf.save(&path).map_err(|e| unwritten(e.to_string()))?;
            Ok((label, split, impath))
        })
        .collect::<Result<_>>()?;
    let list = |which: &str| -> Vec<serde_json::Value> {
        written
            .iter()
            .filter(|(_, s, _)| *s == which)
            .map(|(l, _, p)| json!([p, l, spec.classes[*l].0]))
            .collect()
    };
    let split = json!({"train": list("train"), "val": list("val"), "test": list("test")});
    let path = dir.join(split_file_name(spec.name));
    crate::fsutil::write_atomic(&path, split.to_string().as_bytes())?;
    Ok(path)
}

/// Reads a task written by [`write_task`] as the CLI's `--split FILE` does.
pub fn load_task(
    split_path: &Path,
    name: &str,
) -> std::result::Result<Dataset, crate::data::DataError> {
    let s = split_file::read(split_path)?;
    Ok(Dataset {
        name: name.to_string(),
        classnames: s.classnames,
        image_root: split_path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        train: s.train,
        val: s.val,
        test: s.test,
        templates: vec![super::PROMPT.to_string()],
    })
}
