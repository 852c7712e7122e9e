//! The embedded model, `tiny-world-clip`: compiled into the binary so that `clip-adapter demo`
//! works from anywhere, without the source tree.

use std::path::PathBuf;

use crate::clip::error::Error;

/// Where the embedded model's files live in the source tree (for documentation and tests; the
/// binary never reads it).
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

/// The folder of the system's temp dir that holds the embedded model's files once
/// [`materialize_embedded_model`] wrote them; named after their content, so a changed model
/// gets a new folder rather than stale files.
pub fn embedded_model_dir() -> PathBuf {
    let hash = EMBEDDED_FILES
        .iter()
        .fold(crate::hash::FNV1A64_OFFSET, |h, (_, bytes)| {
            crate::hash::fnv1a64_extend(h, bytes)
        });
    std::env::temp_dir().join(format!("clip-adapter-tiny-world-clip-{hash:016x}"))
}

/// Writes the embedded files (atomically, each only when missing or of another size) into
/// [`embedded_model_dir`] and returns it. The bytes compiled into the binary are the only
/// source: a binary must not read the tree it was built from, which need not exist where it
/// runs (and would put the build machine's paths into it).
pub fn materialize_embedded_model() -> Result<PathBuf, Error> {
    let dir = embedded_model_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    for (name, bytes) in EMBEDDED_FILES {
        let path = dir.join(name);
        if std::fs::metadata(&path).map(|m| m.len() as usize).ok() != Some(bytes.len()) {
            crate::fsutil::write_atomic(&path, bytes)?;
        }
    }
    Ok(dir)
}
