//! The 11 benchmarks of CoOp, CLIP-Adapter and Tip-Adapter, read from the on-disk layout their
//! users already have (CoOp's `DATASETS.md`): `$DATA/<folder>/` holding the images and
//! `split_zhou_<Name>.json`, except ImageNet (`classnames.txt` + `images/{train,val}/<wnid>/`,
//! val used as the test set) and FGVC-Aircraft (`variants.txt` + `images_variant_*.txt`).
//! Class names and prompt templates ship with the tool (`assets/datasets/`).
//!
//! Besides them, [`IMAGENET_VARIANTS`]: the test-only targets of domain generalisation
//! (ImageNet-V2, -Sketch, -A, -R), read by `imagenet_variants.rs`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{imagenet_variants, split_file, DataError, Dataset, Parts, Sample};

/// How a benchmark's split is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `split_zhou_<Name>.json` in the dataset folder.
    SplitJson,
    /// `classnames.txt` + `images/train/<wnid>/*` and `images/val/<wnid>/*`.
    ImageNet,
    /// `variants.txt` + `images_variant_{train,val,test}.txt` (`<image id> <variant>` lines).
    Fgvc,
    /// Test only: `<image dir>/<class index 0..999>/*` (ImageNet-V2).
    ImageNetV2,
    /// Test only: `<image dir>/<wnid>/*`, ImageNet's classes (ImageNet-Sketch).
    ImageNetSketch,
    /// Test only: `<image dir>/<wnid>/*`, 200 of ImageNet's classes (ImageNet-A, -R).
    ImageNetSubset,
}

/// One benchmark and where CoOp expects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Benchmark {
    /// Dassl's `DATASET.NAME` (`Caltech101`): the key of its template and split file.
    pub name: &'static str,
    /// CoOp's config name (`caltech101`): what the cache and `--dataset` use.
    pub key: &'static str,
    /// The folder under `$DATA` (`caltech-101`).
    pub folder: &'static str,
    /// The image folder inside it that split paths are relative to (`""`: the folder itself).
    pub image_dir: &'static str,
    pub layout: Layout,
    /// CoOp's published split sizes (train, val, test), to check a split file against; a
    /// test-only dataset has (0, 0, test).
    pub published: (usize, usize, usize),
}

macro_rules! bench {
    ($name:literal, $key:literal, $folder:literal, $dir:literal, $layout:ident, $t:literal, $v:literal, $s:literal) => {
        Benchmark {
            name: $name,
            key: $key,
            folder: $folder,
            image_dir: $dir,
            layout: Layout::$layout,
            published: ($t, $v, $s),
        }
    };
}

/// The benchmarks, in the order of CoOp's dataset table. Folders and image folders are CoOp's
/// (`datasets/*.py`: `dataset_dir`, `image_dir`); split sizes as CoOp's published `split_zhou_*.json` files give them.
pub const BENCHMARKS: [Benchmark; 11] = [
    bench!("ImageNet", "imagenet", "imagenet", "images", ImageNet, 1_281_167, 0, 50_000),
    bench!(
        "Caltech101",
        "caltech101",
        "caltech-101",
        "101_ObjectCategories",
        SplitJson,
        4128,
        1649,
        2465
    ),
    bench!(
        "OxfordPets",
        "oxford_pets",
        "oxford_pets",
        "images",
        SplitJson,
        2944,
        736,
        3669
    ),
    bench!(
        "StanfordCars",
        "stanford_cars",
        "stanford_cars",
        "",
        SplitJson,
        6509,
        1635,
        8041
    ),
    bench!(
        "OxfordFlowers",
        "oxford_flowers",
        "oxford_flowers",
        "jpg",
        SplitJson,
        4093,
        1633,
        2463
    ),
    bench!("Food101", "food101", "food-101", "images", SplitJson, 50_500, 20_200, 30_300),
    bench!(
        "FGVCAircraft",
        "fgvc_aircraft",
        "fgvc_aircraft",
        "images",
        Fgvc,
        3334,
        3333,
        3333
    ),
    bench!("SUN397", "sun397", "sun397", "SUN397", SplitJson, 15_880, 3970, 19_850),
    bench!(
        "DescribableTextures",
        "dtd",
        "dtd",
        "images",
        SplitJson,
        2820,
        1128,
        1692
    ),
    bench!("EuroSAT", "eurosat", "eurosat", "2750", SplitJson, 13_500, 5400, 8100),
    bench!(
        "UCF101",
        "ucf101",
        "ucf101",
        "UCF-101-midframes",
        SplitJson,
        7639,
        1898,
        3783
    ),
];

/// The ImageNet variants of the domain-generalisation protocol (CoOp's and CoCoOp's domain
/// table): test sets only, of ImageNet's classes. Folders and names are CoOp's
/// (`datasets/imagenetv2.py`, `imagenet_sketch.py`, `imagenet_a.py`, `imagenet_r.py`); test
/// sizes as published (ImageNet-V2 matched-frequency, ImageNet-Sketch, ImageNet-A, ImageNet-R).
pub const IMAGENET_VARIANTS: [Benchmark; 4] = [
    bench!(
        "ImageNetV2",
        "imagenet_v2",
        "imagenetv2",
        "imagenetv2-matched-frequency-format-val",
        ImageNetV2,
        0,
        0,
        10_000
    ),
    bench!(
        "ImageNetSketch",
        "imagenet_sketch",
        "imagenet-sketch",
        "images",
        ImageNetSketch,
        0,
        0,
        50_889
    ),
    bench!(
        "ImageNetA",
        "imagenet_a",
        "imagenet-adversarial",
        "imagenet-a",
        ImageNetSubset,
        0,
        0,
        7500
    ),
    bench!(
        "ImageNetR",
        "imagenet_r",
        "imagenet-rendition",
        "imagenet-r",
        ImageNetSubset,
        0,
        0,
        30_000
    ),
];

/// Every dataset read in CoOp's layout: the 11 benchmarks, then the ImageNet variants.
pub fn all_benchmarks() -> impl Iterator<Item = &'static Benchmark> {
    BENCHMARKS.iter().chain(IMAGENET_VARIANTS.iter())
}

const TEMPLATES_JSON: &str = include_str!("../../assets/datasets/templates.json");
use super::imagenet_variants::IMAGENET_CLASSNAMES;

/// Shipped class-name lists, one name per line, by Dassl name.
const CLASSNAMES: [(&str, &str); 10] = [
    (
        "Caltech101",
        include_str!("../../assets/datasets/classnames/Caltech101.txt"),
    ),
    (
        "DescribableTextures",
        include_str!("../../assets/datasets/classnames/DescribableTextures.txt"),
    ),
    (
        "EuroSAT",
        include_str!("../../assets/datasets/classnames/EuroSAT.txt"),
    ),
    (
        "FGVCAircraft",
        include_str!("../../assets/datasets/classnames/FGVCAircraft.txt"),
    ),
    (
        "Food101",
        include_str!("../../assets/datasets/classnames/Food101.txt"),
    ),
    (
        "OxfordFlowers",
        include_str!("../../assets/datasets/classnames/OxfordFlowers.txt"),
    ),
    (
        "OxfordPets",
        include_str!("../../assets/datasets/classnames/OxfordPets.txt"),
    ),
    (
        "SUN397",
        include_str!("../../assets/datasets/classnames/SUN397.txt"),
    ),
    (
        "StanfordCars",
        include_str!("../../assets/datasets/classnames/StanfordCars.txt"),
    ),
    (
        "UCF101",
        include_str!("../../assets/datasets/classnames/UCF101.txt"),
    ),
];

/// Which prompt templates to use for a benchmark's text classifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateSet {
    /// One hand-written template per dataset (`CUSTOM_TEMPLATES` of CLIP-Adapter and CoOp).
    #[default]
    Custom,
    /// Tip-Adapter's: the same, except ImageNet's 7-template ensemble.
    TipAdapter,
    /// The 7 selected ImageNet templates (CoOp `IMAGENET_TEMPLATES_SELECT`), for any dataset.
    ImageNet7,
    /// CLIP's 80 ImageNet templates, for any dataset.
    ImageNet80,
}

impl TemplateSet {
    /// Every set, with its name on the command line.
    pub const ALL: [(TemplateSet, &'static str); 4] = [
        (TemplateSet::Custom, "custom"),
        (TemplateSet::TipAdapter, "tip"),
        (TemplateSet::ImageNet7, "imagenet7"),
        (TemplateSet::ImageNet80, "imagenet80"),
    ];
}

impl std::str::FromStr for TemplateSet {
    type Err = crate::unknown_name::UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let found = TemplateSet::ALL.iter().find(|(_, name)| *name == s);
        found.map(|(set, _)| *set).ok_or_else(|| {
            let names: Vec<&str> = TemplateSet::ALL.iter().map(|(_, n)| *n).collect();
            crate::unknown_name::UnknownName::new("template set", s, &names)
        })
    }
}

#[derive(serde::Deserialize)]
struct Templates {
    #[serde(rename = "CUSTOM_TEMPLATES")]
    custom: std::collections::BTreeMap<String, String>,
    #[serde(rename = "IMAGENET_TEMPLATES_SELECT_7")]
    imagenet7: Vec<String>,
    #[serde(rename = "IMAGENET_TEMPLATES_80")]
    imagenet80: Vec<String>,
}

fn templates() -> &'static Templates {
    static T: OnceLock<Templates> = OnceLock::new();
    // The asset is compiled in and checked by a unit test, so a parse failure is a build bug.
    T.get_or_init(|| serde_json::from_str(TEMPLATES_JSON).expect("assets/datasets/templates.json"))
}

impl Benchmark {
    /// Finds a benchmark by Dassl name, config name or folder, ignoring case and `-`/`_`
    /// (`Caltech101`, `caltech101`, `caltech-101`).
    pub fn find(name: &str) -> Result<&'static Benchmark, DataError> {
        let norm = |s: &str| s.to_lowercase().replace(['-', '_'], "");
        let wanted = norm(name);
        all_benchmarks()
            .find(|b| [b.name, b.key, b.folder].iter().any(|n| norm(n) == wanted))
            .ok_or_else(|| DataError::UnknownDataset {
                name: name.to_string(),
                known: all_benchmarks()
                    .map(|b| b.key)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Whether the dataset is a test set only (the ImageNet variants): no training images,
    /// so it is a domain-generalisation target, never a source.
    pub fn test_only(&self) -> bool {
        matches!(
            self.layout,
            Layout::ImageNetV2 | Layout::ImageNetSketch | Layout::ImageNetSubset
        )
    }

    /// The shipped class names in label order (for ImageNet-A and -R: their 200 classes in
    /// wnid order, the labels when every class folder is there).
    pub fn classnames(&self) -> Vec<String> {
        match self.layout {
            Layout::ImageNet | Layout::ImageNetV2 | Layout::ImageNetSketch => {
                return imagenet_variants::imagenet_classes()
                    .into_iter()
                    .map(|(_, name)| name)
                    .collect();
            }
            Layout::ImageNetSubset => {
                let names = imagenet_variants::imagenet_classes();
                return (imagenet_variants::subset_classes(self.key).into_iter())
                    .filter_map(|(_, i)| names.get(i).map(|(_, n)| n.clone()))
                    .collect();
            }
            Layout::SplitJson | Layout::Fgvc => {}
        }
        CLASSNAMES
            .iter()
            .find(|(n, _)| *n == self.name)
            .map(|(_, text)| text.lines().map(|l| l.trim_end().to_string()).collect())
            .unwrap_or_default()
    }

    /// The prompt templates of `set` for this benchmark.
    pub fn templates(&self, set: TemplateSet) -> Vec<String> {
        let t = templates();
        match set {
            TemplateSet::ImageNet7 => t.imagenet7.clone(),
            TemplateSet::ImageNet80 => t.imagenet80.clone(),
            TemplateSet::TipAdapter if self.layout == Layout::ImageNet => t.imagenet7.clone(),
            TemplateSet::Custom | TemplateSet::TipAdapter => {
                t.custom.get(self.name).cloned().into_iter().collect()
            }
        }
    }

    /// `split_zhou_<Name>.json`, for the benchmarks stored that way.
    pub fn split_file_name(&self) -> Option<String> {
        (self.layout == Layout::SplitJson).then(|| format!("split_zhou_{}.json", self.name))
    }

    /// The dataset folder: `root/<folder>` when `root` is CoOp's `$DATA`, else `root` itself.
    pub fn dataset_dir(&self, root: &Path) -> PathBuf {
        let inside = root.join(self.folder);
        if inside.is_dir() {
            inside
        } else {
            root.to_path_buf()
        }
    }

    /// Reads the benchmark under `root` (`$DATA` or the dataset folder). `split` replaces the
    /// split file CoOp would read. Class names must equal the shipped ones, except for the
    /// ImageNet variants' (the classes whose folders are there).
    pub fn load(&self, root: &Path, split: Option<&Path>) -> Result<Dataset, DataError> {
        let dir = self.dataset_dir(root);
        let image_root = dir.join(self.image_dir);
        let mut classnames = self.classnames();
        let (train, val, test) = match (self.layout, split) {
            (Layout::SplitJson, _) | (_, Some(_)) => {
                let path = match split {
                    Some(p) => p.to_path_buf(),
                    None => dir.join(self.split_file_name().unwrap_or_default()),
                };
                let s = split_file::read(&path)?;
                split_file::check_classnames(&path, self.name, &s.classnames, &self.classnames())?;
                (s.train, s.val, s.test)
            }
            (Layout::Fgvc, None) => self.read_fgvc(&dir)?,
            (Layout::ImageNet, None) => self.read_imagenet(&dir, &image_root)?,
            (Layout::ImageNetV2 | Layout::ImageNetSketch | Layout::ImageNetSubset, None) => {
                let (names, test) = imagenet_variants::read_variant(self, &dir, &image_root)?;
                classnames = names;
                (Vec::new(), Vec::new(), test)
            }
        };
        Ok(Dataset {
            name: self.key.to_string(),
            classnames,
            image_root,
            train,
            val,
            test,
            templates: self.templates(TemplateSet::Custom),
        })
    }

    /// CoOp `datasets/fgvc_aircraft.py`: labels are line numbers in `variants.txt`; each split
    /// file line is `<image id> <variant name>`, the image `images/<id>.jpg`.
    fn read_fgvc(&self, dir: &Path) -> Result<Parts, DataError> {
        let variants_path = dir.join("variants.txt");
        let variants: Vec<String> = read_lines(&variants_path)?
            .into_iter()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        split_file::check_classnames(&variants_path, self.name, &variants, &self.classnames())?;
        let read =
            |part: &str| -> Result<Vec<Sample>, DataError> {
                let path = dir.join(format!("images_variant_{part}.txt"));
                let mut out = Vec::new();
                for (n, line) in read_lines(&path)?.iter().enumerate() {
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    let (id, variant) = line.split_once(' ').ok_or_else(|| DataError::Line {
                        path: path.clone(),
                        line: n + 1,
                        msg: format!("expected `<image id> <variant>`, got `{line}`"),
                    })?;
                    let label = variants.iter().position(|v| v == variant).ok_or_else(|| {
                        DataError::Line {
                            path: path.clone(),
                            line: n + 1,
                            msg: format!(
                                "variant `{variant}` is not in {}",
                                variants_path.display()
                            ),
                        }
                    })?;
                    out.push(Sample {
                        impath: format!("{id}.jpg"),
                        label,
                    });
                }
                Ok(out)
            };
        Ok((read("train")?, read("val")?, read("test")?))
    }

    /// CoOp `datasets/imagenet.py`: the class folders of `images/train` sorted by name give the
    /// labels; `classnames.txt` (`<wnid> <name>`, the shipped list when absent) names them; the
    /// val folder is the test set and there is no separate val. File order within a class
    /// folder is sorted by name: CoOp uses `os.listdir` order, which depends on the file system,
    /// so ImageNet draws are reproducible here but not across CoOp installations.
    fn read_imagenet(&self, dir: &Path, image_root: &Path) -> Result<Parts, DataError> {
        let names_path = dir.join("classnames.txt");
        let text = if names_path.is_file() {
            std::fs::read_to_string(&names_path).map_err(|e| DataError::io(&names_path, e))?
        } else {
            IMAGENET_CLASSNAMES.to_string()
        };
        let wnid_to_name: std::collections::HashMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.trim().split_once(' '))
            .collect();
        let read = |part: &str| -> Result<(Vec<String>, Vec<Sample>), DataError> {
            let split_dir = image_root.join(part);
            let folders = sorted_entries(&split_dir, true)?;
            let mut names = Vec::new();
            let mut samples = Vec::new();
            for (label, wnid) in folders.iter().enumerate() {
                let name = wnid_to_name
                    .get(wnid.as_str())
                    .ok_or_else(|| DataError::Format {
                        path: names_path.clone(),
                        msg: format!(
                            "class folder `{wnid}` of {} is not listed",
                            split_dir.display()
                        ),
                    })?;
                names.push(name.trim().to_string());
                for file in sorted_entries(&split_dir.join(wnid), false)? {
                    samples.push(Sample {
                        impath: format!("{part}/{wnid}/{file}"),
                        label,
                    });
                }
            }
            Ok((names, samples))
        };
        let (names, train) = read("train")?;
        split_file::check_classnames(
            &image_root.join("train"),
            self.name,
            &names,
            &self.classnames(),
        )?;
        let (names, test) = read("val")?;
        split_file::check_classnames(
            &image_root.join("val"),
            self.name,
            &names,
            &self.classnames(),
        )?;
        Ok((train, Vec::new(), test))
    }
}

fn read_lines(path: &Path) -> Result<Vec<String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// Names in `dir` not starting with `.` (Dassl's `listdir_nohidden`), directories or files
/// only, sorted.
pub(crate) fn sorted_entries(dir: &Path, dirs: bool) -> Result<Vec<String>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.path().is_dir();
        if !name.starts_with('.') && is_dir == dirs {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_benchmark_has_names_and_a_template() {
        for b in all_benchmarks() {
            let names = b.classnames();
            assert!(!names.is_empty(), "{}", b.name);
            assert_eq!(b.templates(TemplateSet::Custom).len(), 1, "{}", b.name);
            assert!(
                names.iter().all(|n| !n.is_empty() && n.trim() == n),
                "{}",
                b.name
            );
        }
        assert_eq!(
            Benchmark::find("ImageNet").unwrap().classnames().len(),
            1000
        );
        assert_eq!(
            Benchmark::find("imagenet")
                .unwrap()
                .templates(TemplateSet::TipAdapter)
                .len(),
            7
        );
        assert_eq!(
            Benchmark::find("eurosat")
                .unwrap()
                .templates(TemplateSet::ImageNet80)
                .len(),
            80
        );
        assert_eq!(Benchmark::find("caltech-101").unwrap().name, "Caltech101");
        assert_eq!(
            Benchmark::find("FGVC_Aircraft").unwrap().classnames().len(),
            100
        );
        assert!(Benchmark::find("mnist").is_err());
        for (name, key, classes) in [
            ("imagenetv2", "imagenet_v2", 1000),
            ("ImageNet-Sketch", "imagenet_sketch", 1000),
            ("imagenet-adversarial", "imagenet_a", 200),
            ("ImageNetR", "imagenet_r", 200),
        ] {
            let b = Benchmark::find(name).unwrap();
            assert_eq!((b.key, b.classnames().len()), (key, classes));
            assert!(b.test_only() && b.published.0 == 0 && b.published.1 == 0);
        }
        assert!(!BENCHMARKS.iter().any(Benchmark::test_only));
        // ImageNet-A's first class is ImageNet's 6th (0-based), the stingray.
        assert_eq!(
            Benchmark::find("imagenet_a").unwrap().classnames()[0],
            Benchmark::find("imagenet").unwrap().classnames()[6]
        );
    }
}
