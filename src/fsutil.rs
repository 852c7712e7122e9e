//! File helpers: writes that never leave a half-written file behind. Every file the library
//! writes (feature caches, results, reports, figures, heads) goes through [`write_atomic_with`],
//! which holds the crash harness's fault points (`crate::fault`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// A file that could not be written; `source` says why.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` atomically (temp file in the same folder, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Streams into a temp file beside `path` (`.<name>.tmp-<pid>`) and renames it into place only
/// when `fill` succeeds, so a reader sees the old file or the complete new one, never a part.
/// The file gets the permissions a plain `File::create` would (the umask decides). The fault
/// points sit between the steps a crash can separate.
pub fn write_atomic_with<F>(path: &Path, fill: F) -> Result<(), WriteError>
where
    F: FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
{
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::new(file);
        fill(&mut out)?;
        crate::fault::disk_full()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        crate::fault::point("write");
        std::fs::rename(&tmp, path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(WriteError {
            path: path.to_path_buf(),
            source,
        });
    }
    crate::fault::point("rename");
    Ok(())
}
