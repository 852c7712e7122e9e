//! The largest size a file or a flag may set, in one table.
//!
//! Configs, tokenizer files, data files and flags state sizes that the code then allocates
//! from (position tables, weight shapes, token rows, per-class lists). Each such size is checked
//! here, where it is parsed, so that a corrupt or hostile value is refused naming the field, the
//! value and the limit, instead of surfacing later as an allocation failure, an arithmetic
//! overflow or a tensor-shape mismatch far from its cause.
//!
//! Every limit is several times the largest value a released model or a published protocol
//! uses (the `why` of each says which), so no real input comes near one. `docs/reliability.md`
//! holds the same table; a unit test below keeps the two in step.

/// One bounded size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// What is bounded, in words (the docs' table is keyed by it).
    pub what: &'static str,
    /// The largest accepted value.
    pub max: u64,
    /// Why this bound: the largest real value it leaves room for.
    pub why: &'static str,
}

/// A value above its [`Limit`]: the field (a file's key, or an option the caller set), the
/// value and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} = {value} is above the limit of {max} ({why})",
    if *option { crate::hint::opt(field) } else { field.clone() }
)]
pub struct LimitError {
    pub field: String,
    /// Whether `field` is an option's name as the library spells it (`batch_size`), which a
    /// front end shows in its own spelling (`--batch-size`, `batch_size=`).
    pub option: bool,
    pub value: u64,
    pub max: u64,
    pub what: &'static str,
    pub why: &'static str,
}

impl Limit {
    /// `value` of the option named `option` (as the library's structs name it) when it is
    /// within the limit.
    pub fn check_option<T: Copy + TryInto<u64>>(
        &self,
        option: &str,
        value: T,
    ) -> Result<T, LimitError> {
        self.check(option, value)
            .map_err(|e| LimitError { option: true, ..e })
    }

    /// `value` when it is within the limit; otherwise an error naming `field`.
    pub fn check<T: Copy + TryInto<u64>>(&self, field: &str, value: T) -> Result<T, LimitError> {
        // A value that does not even fit in u64 is over every limit.
        let wide: u64 = value.try_into().unwrap_or(u64::MAX);
        if wide <= self.max {
            Ok(value)
        } else {
            Err(LimitError {
                field: field.to_string(),
                option: false,
                value: wide,
                max: self.max,
                what: self.what,
                why: self.why,
            })
        }
    }
}

pub const IMAGE_SIZE: Limit = Limit {
    what: "image size (pixels per side)",
    max: 2048,
    why: "4x the largest released CLIP input, SigLIP so400m at 512 px; RN50x64 uses 448 px",
};

pub const PATCH_SIZE: Limit = Limit {
    what: "ViT patch size",
    max: 256,
    why: "released ViTs use 14, 16 or 32 px",
};

/// Patches per image plus the class token: the ViT's sequence length and position table.
pub const VISION_POSITIONS: Limit = Limit {
    what: "vision positions ((image size / patch size)^2 + 1)",
    max: 65_537,
    why: "a 256 x 256 patch grid; SigLIP at 512 px / 16 has 1,024 patches, ViT-L/14-336 576",
};

pub const WIDTH: Limit = Limit {
    what: "width (hidden size, embedding size, ResNet feature width)",
    max: 16_384,
    why: "EVA02-E, the widest released CLIP, is 1,792 wide; RN50x64's features are 4,096",
};

pub const MLP_WIDTH: Limit = Limit {
    what: "MLP width (intermediate size)",
    max: 65_536,
    why: "EVA02-E uses 15,360, ViT-bigG/14 8,192",
};

pub const LAYERS: Limit = Limit {
    what: "layers (transformer blocks, or blocks of one ResNet stage)",
    max: 256,
    why: "EVA02-E has 64 vision blocks, RN50x64 36 blocks in one stage",
};

pub const HEADS: Limit = Limit {
    what: "attention heads",
    max: 1024,
    why: "released CLIPs use at most 64, in RN50x64's attention pool",
};

pub const CHANNELS: Limit = Limit {
    what: "image channels",
    max: 4,
    why: "images are decoded to RGB; 4 leaves room for RGBA",
};

/// Tokens per text, start and end tokens included.
pub const CONTEXT_LENGTH: Limit = Limit {
    what: "context length (tokens per text)",
    max: 2048,
    why: "released text towers use 77 tokens in OpenAI's CLIP, 64 in SigLIP, 256 in SigLIP 2",
};

pub const VOCABULARY: Limit = Limit {
    what: "vocabulary size",
    max: 1 << 20,
    why: "4x the 256,000 tokens of Gemma's tokenizer, the largest CLIP-family vocabulary, used by SigLIP 2",
};

pub const CLASSES: Limit = Limit {
    what: "classes",
    max: 1_000_000,
    why: "ImageNet-21k has 21,841 classes",
};

pub const SHOTS: Limit = Limit {
    what: "shots per class",
    max: 100_000,
    why: "few-shot protocols use 1 to 16; a full ImageNet class has 1,300 images",
};

pub const VIEWS: Limit = Limit {
    what: "augmented views per image",
    max: 1000,
    why: "Tip-Adapter caches 10 augmented views",
};

pub const BATCH: Limit = Limit {
    what: "batch size",
    max: 65_536,
    why: "encoders run 32 to 1,024 images at once; a head trains on cached features in batches of 32 to 256",
};

pub const LIST_FILE: Limit = Limit {
    what: "bytes of a list file (split file, manifest, results.csv)",
    max: 1 << 30,
    why: "a split file of ImageNet-21k's 14 million images is about 0.7 GB; a results.csv of 100,000 rows about 30 MB",
};

/// The size of the list file at `path`, when it is within [`LIST_FILE`]: checked before the
/// file is read whole into memory. A file that cannot be statted is left to the read to report.
pub fn check_list_file(path: &std::path::Path) -> Result<(), LimitError> {
    match std::fs::metadata(path) {
        Ok(m) => LIST_FILE.check("file size", m.len()).map(|_| ()),
        Err(_) => Ok(()),
    }
}

/// Every limit, in the order of the docs' table.
pub const ALL: &[Limit] = &[
    IMAGE_SIZE,
    PATCH_SIZE,
    VISION_POSITIONS,
    WIDTH,
    MLP_WIDTH,
    LAYERS,
    HEADS,
    CHANNELS,
    CONTEXT_LENGTH,
    VOCABULARY,
    CLASSES,
    SHOTS,
    VIEWS,
    BATCH,
    LIST_FILE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_above_its_limit_names_field_value_and_limit() {
        assert_eq!(IMAGE_SIZE.check("vision_cfg.image_size", 448usize), Ok(448));
        let e = IMAGE_SIZE
            .check("vision_cfg.image_size", 1_000_000_000usize)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("vision_cfg.image_size = 1000000000 is above the limit of 2048"),
            "{msg}"
        );
        // A u128 beyond u64 is reported as u64::MAX, never wrapped into range.
        assert_eq!(WIDTH.check("w", u128::MAX).unwrap_err().value, u64::MAX);
    }

    /// docs/reliability.md lists every limit with its value.
    #[test]
    fn the_docs_table_lists_every_limit() {
        let doc = include_str!("../docs/reliability.md");
        for limit in ALL {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", limit.what)))
                .unwrap_or_else(|| panic!("docs/reliability.md has no row for `{}`", limit.what));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let documented: u64 = cells[2]
                .replace(',', "")
                .parse()
                .unwrap_or_else(|_| panic!("`{}`: limit cell `{}`", limit.what, cells[2]));
            assert_eq!(documented, limit.max, "{}", limit.what);
        }
    }

    /// Real models fit: the sizes of the largest released ones pass every limit they meet.
    #[test]
    fn released_models_are_within_the_limits() {
        // (limit, value): ViT-bigG/14, EVA02-E/14, SigLIP so400m at 512, RN50x64 at 448.
        for (limit, value) in [
            (IMAGE_SIZE, 512u64),
            (IMAGE_SIZE, 448),
            (PATCH_SIZE, 14),
            (VISION_POSITIONS, (512 / 16) * (512 / 16) + 1),
            (WIDTH, 1792),
            (WIDTH, 128 * 32),
            (MLP_WIDTH, 15_360),
            (LAYERS, 64),
            (HEADS, 64),
            (CONTEXT_LENGTH, 256),
            (VOCABULARY, 256_000),
            (CLASSES, 21_841),
        ] {
            assert!(limit.check("x", value).is_ok(), "{}: {value}", limit.what);
        }
    }
}
