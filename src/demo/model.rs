//! The embedded model, `tiny-world-clip`: compiled into the binary so that `clip-adapter demo`
//! works from anywhere, without the source tree.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// The embedded model, relative to the crate root.
pub const EMBEDDED_MODEL: &str = "assets/tiny-world-clip";

const EMBEDDED_FILES: [(&str, &[u8]); 3] = [
    (
        "open_clip_config.json",
        include_bytes!("../../assets/tiny-world-clip/open_clip_config.json"),
    ),
    (
        "open_clip_model.safetensors",
        include_bytes!("../../assets/tiny-world-clip/open_clip_model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../assets/tiny-world-clip/tokenizer.json"),
    ),
];

/// A directory holding the embedded model: its files are written once (atomically) to a folder
/// of the system's temp dir named after their content, and reused by later runs.
pub fn embedded_model_dir() -> PathBuf {
    // Named after the files' content: a changed model gets a new folder rather than stale files.
    let hash = EMBEDDED_FILES
        .iter()
        .fold(crate::hash::FNV1A64_OFFSET, |h, (_, bytes)| {
            crate::hash::fnv1a64_extend(h, bytes)
        });
    let dir = std::env::temp_dir().join(format!("clip-adapter-tiny-world-clip-{hash:016x}"));
    let materialize = || -> std::result::Result<(), Error> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for (name, bytes) in EMBEDDED_FILES {
            let path = dir.join(name);
            if std::fs::metadata(&path).map(|m| m.len() as usize).ok() != Some(bytes.len()) {
                crate::fsutil::write_atomic(&path, bytes)?;
            }
        }
        Ok(())
    };
    match materialize() {
        Ok(()) => dir,
        // An unwritable temp dir: fall back to the source tree's copy (a missing one is then
        // reported by the model loader, naming the directory).
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join(EMBEDDED_MODEL),
    }
}
