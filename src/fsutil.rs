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
    remove_stale_temps(path, &name);
    Ok(())
}

/// Removes the temp files that writers of `path` killed before their rename left behind
/// (`.<name>.tmp-<pid>` of a process that no longer exists), so that a rerun after a crash
/// leaves the folder as an uninterrupted run does. A live process's temp file is kept: it may
/// be another writer's, still filling. Where processes cannot be looked up (no `/proc`),
/// nothing is removed.
fn remove_stale_temps(path: &Path, name: &str) {
    let (Some(dir), prefix) = (path.parent(), format!(".{name}.tmp-")) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let pid = (file.to_str())
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| pid != std::process::id() && process_is_gone(pid)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether no process `pid` exists (Linux: no `/proc/<pid>`); `false` where it cannot be told.
fn process_is_gone(pid: u32) -> bool {
    Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_write_removes_the_temp_files_of_dead_writers_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.md");
        // A pid above Linux's largest (2^22) never names a live process; pid 1 always does.
        let dead = dir.path().join(".report.md.tmp-99999999");
        let alive = dir.path().join(".report.md.tmp-1");
        let other_file = dir.path().join(".results.csv.tmp-99999999");
        for p in [&dead, &alive, &other_file] {
            std::fs::write(p, b"partial").unwrap();
        }
        super::write_atomic(&path, b"whole\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"whole\n");
        assert!(!dead.exists(), "a dead writer's temp file is removed");
        assert!(alive.exists(), "a live process's temp file is kept");
        assert!(
            other_file.exists(),
            "another file's temp file is not touched"
        );
    }
}
