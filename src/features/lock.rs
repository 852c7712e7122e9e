//! One writer per cache file, and clean-up of what killed writers left behind.
//!
//! Every file the cache writes (a set, a shard, a text file) has a lock file beside it,
//! `.<name>.lock`, locked exclusively (an advisory `flock` through the `fs4` crate) by the
//! process that encodes or writes it, for as long as it does, with that process's PID written
//! in it. A second process that wants the same file waits for the lock and is told which PID it
//! waits for; by then the file is usually complete and it reuses it. The kernel drops the lock
//! when its holder dies, however it dies, so holding a file's lock proves that no live process
//! is writing it: whatever temp files (`.<name>.tmp-<pid>`, `.chunk-*.tmp-<pid>` in its resume
//! folder) or, once the file is complete, resume folder (`<name>.partial/`) are still there were
//! left by a dead process and are removed. Lock files themselves stay (removing one would race
//! with a process about to lock it); they are a few bytes each.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::cache::Partial;
use super::FeatureError;

/// A held lock on one cache file; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// `.<name>.lock` beside `target`.
pub fn lock_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.lock"))
}

fn open(target: &Path) -> Result<(File, PathBuf), FeatureError> {
    let path = lock_path(target);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| FeatureError::io(dir, e))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| FeatureError::io(&path, e))?;
    Ok((file, path))
}

fn claim(mut file: File, path: &Path) -> Result<FileLock, FeatureError> {
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(pid.as_bytes()))
        .map_err(|e| FeatureError::io(path, e))?;
    Ok(FileLock { _file: file })
}

/// The PID the holder wrote, if it has yet.
fn holder(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Takes `target`'s lock if no other process holds it.
pub fn try_lock(target: &Path) -> Result<Option<FileLock>, FeatureError> {
    let (file, path) = open(target)?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => claim(file, &path).map(Some),
        Err(fs4::TryLockError::WouldBlock) => Ok(None),
        Err(fs4::TryLockError::Error(e)) => Err(FeatureError::io(&path, e)),
    }
}

/// Takes `target`'s lock, waiting while another process holds it; `on_wait` is told that
/// process's PID (when it has written it) before the wait.
pub fn lock(target: &Path, on_wait: &mut dyn FnMut(Option<u32>)) -> Result<FileLock, FeatureError> {
    let (mut file, path) = open(target)?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => {
            on_wait(holder(&mut file));
            fs4::FileExt::lock(&file).map_err(|e| FeatureError::io(&path, e))?;
        }
        Err(fs4::TryLockError::Error(e)) => return Err(FeatureError::io(&path, e)),
    }
    claim(file, &path)
}

/// `.<name>.tmp-<pid>` -> `<name>`.
fn temp_target(name: &str) -> Option<&str> {
    let (stem, pid) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    (!pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(stem)
}

fn remove_file(path: &Path) -> Result<(), FeatureError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FeatureError::io(path, e)),
        _ => Ok(()),
    }
}

/// Removes what dead writers of `target` left: temp files beside it and in its resume folder,
/// and the resume folder itself when `target` is complete. The caller holds `target`'s lock.
pub fn clean(target: &Path, _held: &FileLock) -> Result<Vec<PathBuf>, FeatureError> {
    let mut removed = Vec::new();
    let Some(dir) = target.parent() else {
        return Ok(removed);
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = Partial::for_target(target);
    for d in [dir, partial.dir.as_path()] {
        let Ok(read) = std::fs::read_dir(d) else {
            continue;
        };
        for e in read.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            let mine = match temp_target(&file) {
                Some(t) if d == dir => t == name,
                // Inside the resume folder every temp file is a chunk of this target.
                Some(_) => true,
                None => false,
            };
            if mine {
                remove_file(&e.path())?;
                removed.push(e.path());
            }
        }
    }
    if target.is_file() && partial.dir.is_dir() {
        partial.remove()?;
        removed.push(partial.dir.clone());
    }
    Ok(removed)
}

/// [`clean`] for every file of `dir` that has leftovers and whose lock is free; files locked by
/// a live process keep theirs.
pub fn sweep(dir: &Path) -> Result<Vec<PathBuf>, FeatureError> {
    let mut targets = std::collections::BTreeSet::new();
    let Ok(read) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    for e in read.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(t) = temp_target(&name) {
            targets.insert(t.to_string());
        } else if let Some(t) = name.strip_suffix(".partial") {
            targets.insert(t.to_string());
        }
    }
    let mut removed = Vec::new();
    for t in targets {
        let target = dir.join(t);
        if let Some(held) = try_lock(&target)? {
            removed.extend(clean(&target, &held)?);
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_map_to_their_target() {
        assert_eq!(
            temp_target(".a.b.safetensors.tmp-123"),
            Some("a.b.safetensors")
        );
        assert_eq!(temp_target(".x.lock"), None);
        assert_eq!(temp_target(".a.tmp-"), None);
        assert_eq!(temp_target(".a.tmp-12x"), None);
        assert_eq!(temp_target("a.tmp-12"), None);
    }

    #[test]
    fn a_held_lock_is_refused_to_a_second_holder_and_freed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("set.safetensors");
        let held = try_lock(&target).unwrap().expect("free");
        assert!(try_lock(&target).unwrap().is_none(), "held");
        let mut f = File::open(lock_path(&target)).unwrap();
        assert_eq!(holder(&mut f), Some(std::process::id()));
        drop(held);
        assert!(try_lock(&target).unwrap().is_some(), "freed");
    }
}
