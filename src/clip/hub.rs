//! Resolving `--model`: a local directory or checkpoint file, `openai:NAME` (a file of OpenAI's
//! `clip` package cache), or a Hugging Face hub id looked up in (and, when the hub is reachable,
//! downloaded into) the standard Hugging Face cache.
//!
//! `openai:NAME` takes the names of `clip.available_models()` (`RN50`, `ViT-B/32`,
//! `ViT-L/14@336px`, ...) or their file stems (`ViT-B-32`), and reads `<root>/<file>.pt` where
//! `clip.load` saves it: `download_root` defaults to `~/.cache/clip`; we honour
//! `$XDG_CACHE_HOME/clip` first. Nothing is downloaded for these.
//!
//! The cache layout is `huggingface_hub`'s: `<cache>/models--<org>--<name>/refs/<revision>` holds
//! a commit hash and `snapshots/<commit>/<file>` the files, so a cache filled by Python tools is
//! used as is, and one filled by us is readable by them. We store files directly in the snapshot
//! folder rather than as links into `blobs/`, which both read the same way.
//!
//! Environment, as `huggingface_hub` reads it: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE=1` never
//! touches the network; `HF_ENDPOINT` (default `https://huggingface.co`); `HF_TOKEN`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::{ModelFiles, LAYOUT_FILES};
use crate::clip::error::{Error, NotFound, Result};

/// Where and how to look for hub models.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub cache: PathBuf,
    pub endpoint: String,
    pub offline: bool,
    pub token: Option<String>,
    /// OpenAI's `clip` package cache, for `openai:NAME`.
    pub openai_cache: PathBuf,
}

impl HubOptions {
    /// The options `huggingface_hub` would use in this environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|h| Path::new(&h).join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|x| Path::new(&x).join("huggingface/hub")))
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache/huggingface/hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        HubOptions {
            cache,
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into()),
            offline,
            token: var("HF_TOKEN"),
            openai_cache: openai_cache_from_env(),
        }
    }
}

/// A hub model id with its revision: `org/name` or `org/name@revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    /// Parses `org/name[@revision]`; `None` when `spec` cannot be a hub id.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (spec, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let valid = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (valid(org) && valid(name)).then(|| HubId {
            repo: repo.into(),
            revision: revision.into(),
        })
    }

    fn cache_dir(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}", self.repo.replace('/', "--")))
    }

    fn is_commit(&self) -> bool {
        self.revision.len() == 40 && self.revision.chars().all(|c| c.is_ascii_hexdigit())
    }
}

/// Reports download progress: file name, bytes so far, total bytes when known.
pub type OnDownload<'a> = &'a mut dyn FnMut(&str, u64, Option<u64>);

/// OpenAI's released models: `clip.available_models()` names and the file names `clip.load`
/// saves them under (the last component of their download URLs).
pub const OPENAI_MODELS: &[(&str, &str)] = &[
    ("RN50", "RN50.pt"),
    ("RN101", "RN101.pt"),
    ("RN50x4", "RN50x4.pt"),
    ("RN50x16", "RN50x16.pt"),
    ("RN50x64", "RN50x64.pt"),
    ("ViT-B/32", "ViT-B-32.pt"),
    ("ViT-B/16", "ViT-B-16.pt"),
    ("ViT-L/14", "ViT-L-14.pt"),
    ("ViT-L/14@336px", "ViT-L-14-336px.pt"),
];

/// The folder of OpenAI's `clip` package cache: `$XDG_CACHE_HOME/clip`, else `~/.cache/clip`.
pub fn openai_cache_from_env() -> PathBuf {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    var("XDG_CACHE_HOME")
        .map(|x| Path::new(&x).join("clip"))
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache/clip")))
        .unwrap_or_else(|| PathBuf::from(".cache/clip"))
}

/// The file of OpenAI model `name` (`RN50`, `ViT-B/32` or `ViT-B-32`) in the `clip` cache `root`.
pub fn resolve_openai(name: &str, root: &Path) -> Result<ModelFiles> {
    let spec = format!("openai:{name}");
    let Some((canonical, file)) = OPENAI_MODELS
        .iter()
        .find(|(n, f)| *n == name || f.strip_suffix(".pt") == Some(name))
    else {
        let names: Vec<&str> = OPENAI_MODELS.iter().map(|(n, _)| *n).collect();
        return Err(Error::ModelNotFound {
            spec,
            why: NotFound::UnknownOpenAi { known: names },
        });
    };
    let path = root.join(file);
    if !path.is_file() {
        return Err(Error::ModelNotFound {
            spec,
            why: NotFound::OpenAiFileMissing {
                file,
                canonical,
                path,
            },
        });
    }
    ModelFiles::single_file(&path)
}

/// Turns a `--model` argument into model files: an existing directory or file is used as is,
/// `openai:NAME` is looked up in the `clip` package's cache; otherwise the argument must be a
/// hub id, found in the cache or downloaded into it.
pub fn resolve(spec: &str, opts: &HubOptions, on_download: OnDownload) -> Result<ModelFiles> {
    let path = Path::new(spec);
    if path.is_dir() {
        return ModelFiles::in_dir(path);
    }
    if path.is_file() {
        return ModelFiles::single_file(path);
    }
    if let Some(name) = spec.strip_prefix("openai:") {
        return resolve_openai(name, &opts.openai_cache);
    }
    let Some(id) = HubId::parse(spec) else {
        return Err(Error::ModelNotFound {
            spec: spec.into(),
            why: NotFound::Unrecognised,
        });
    };
    if let Some(files) = cached(&id, &opts.cache) {
        return Ok(files);
    }
    let missing = format!(
        "not in the Hugging Face cache {} (needs {})",
        id.cache_dir(&opts.cache).display(),
        needed_files()
    );
    if opts.offline {
        return Err(Error::ModelNotFound {
            spec: spec.into(),
            why: NotFound::Offline {
                missing,
                repo: id.repo.clone(),
            },
        });
    }
    download(&id, opts, on_download).map_err(|source| Error::Download {
        spec: spec.into(),
        missing,
        endpoint: opts.endpoint.clone(),
        repo: id.repo.clone(),
        source: Box::new(source),
    })
}

/// The snapshot folder of `id` in the cache, when it holds a complete model.
pub fn cached(id: &HubId, cache: &Path) -> Option<ModelFiles> {
    let repo = id.cache_dir(cache);
    let commit = if id.is_commit() {
        id.revision.clone()
    } else {
        std::fs::read_to_string(repo.join("refs").join(&id.revision))
            .ok()?
            .trim()
            .to_string()
    };
    ModelFiles::in_dir(&repo.join("snapshots").join(commit)).ok()
}

/// What a complete model directory holds, in words, for error messages.
fn needed_files() -> String {
    LAYOUT_FILES
        .iter()
        .map(|(_, config, weights)| format!("{config} with one of {}", weights.join(", ")))
        .collect::<Vec<_>>()
        .join("; or ")
}

/// Why a download from the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the repository has none of {0}")]
    Missing(String),
    #[error("{url}: HTTP {code}")]
    Status { url: String, code: u16 },
    #[error("{url}")]
    Request {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url}: the response names no commit (x-repo-commit)")]
    NoCommit { url: String },
    #[error("cannot create {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),
    #[error("the downloaded snapshot is not a complete model")]
    Snapshot(#[source] Box<Error>),
}

fn download(
    id: &HubId,
    opts: &HubOptions,
    on_download: OnDownload,
) -> std::result::Result<ModelFiles, HubError> {
    let repo = id.cache_dir(&opts.cache);
    let mut found = None;
    for (layout, config, weights) in LAYOUT_FILES {
        if let Some((_, commit)) = fetch(id, config, opts, None, on_download)? {
            found = Some((*layout, *weights, commit));
            break;
        }
    }
    let (_, weight_files, commit) = found.ok_or_else(|| HubError::Missing(needed_files()))?;
    let snapshot = repo.join("snapshots").join(&commit);
    let mut has_weights = false;
    for file in weight_files {
        if fetch(id, file, opts, Some(&snapshot), on_download)?.is_some() {
            has_weights = true;
            break;
        }
    }
    if !has_weights {
        return Err(HubError::Missing(weight_files.join(", ")));
    }
    for file in ["tokenizer.json", "vocab.json", "merges.txt"] {
        fetch(id, file, opts, Some(&snapshot), on_download)?;
    }
    if !id.is_commit() {
        let refs = repo.join("refs");
        std::fs::create_dir_all(&refs).map_err(|source| HubError::CreateDir {
            path: refs.clone(),
            source,
        })?;
        crate::fsutil::write_atomic(&refs.join(&id.revision), commit.as_bytes())?;
    }
    ModelFiles::in_dir(&snapshot).map_err(|e| HubError::Snapshot(Box::new(e)))
}

/// Downloads one file into the snapshot folder; `Ok(None)` when the hub says it does not exist.
/// The snapshot folder comes from the commit the hub reports for the first file.
fn fetch(
    id: &HubId,
    file: &str,
    opts: &HubOptions,
    snapshot: Option<&Path>,
    on_download: OnDownload,
) -> std::result::Result<Option<(PathBuf, String)>, HubError> {
    let url = format!(
        "{}/{}/resolve/{}/{file}",
        opts.endpoint.trim_end_matches('/'),
        id.repo,
        id.revision
    );
    let mut request = ureq::get(&url).timeout(std::time::Duration::from_secs(60));
    if let Some(token) = &opts.token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let response = match request.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(404, _)) => return Ok(None),
        Err(ureq::Error::Status(code, _)) => return Err(HubError::Status { url, code }),
        Err(e) => {
            return Err(HubError::Request {
                url,
                source: Box::new(e),
            })
        }
    };
    let commit = response
        .header("x-repo-commit")
        .map(str::to_string)
        .or_else(|| id.is_commit().then(|| id.revision.clone()))
        .ok_or_else(|| HubError::NoCommit { url: url.clone() })?;
    let total = response
        .header("content-length")
        .and_then(|v| v.parse().ok());
    let dir = match snapshot {
        Some(s) => s.to_path_buf(),
        None => id.cache_dir(&opts.cache).join("snapshots").join(&commit),
    };
    std::fs::create_dir_all(&dir).map_err(|source| HubError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let target = dir.join(file);
    let mut body = response.into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    crate::fsutil::write_atomic_with(&target, |out| {
        loop {
            let n = body.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
            done += n as u64;
            on_download(file, done, total);
        }
        if let Some(total) = total {
            if done != total {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed after {done} of {total} bytes"),
                ));
            }
        }
        Ok(())
    })?;
    Ok(Some((target, commit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way a model argument can name nothing is its own `NotFound`, which a caller can
    /// match on (the Python package maps them to its exceptions).
    #[test]
    fn a_model_that_is_not_found_says_why_as_data() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = HubOptions {
            cache: tmp.path().join("hub"),
            endpoint: "http://127.0.0.1:9".into(),
            offline: true,
            token: None,
            openai_cache: tmp.path().join("clip"),
        };
        let why = |spec: &str| match resolve(spec, &opts, &mut |_, _, _| {}) {
            Err(Error::ModelNotFound { why, .. }) => why,
            other => panic!("{spec}: {other:?}"),
        };
        assert_eq!(why("no such thing"), NotFound::Unrecognised);
        assert!(matches!(
            why("openai:RN9000"),
            NotFound::UnknownOpenAi { .. }
        ));
        assert!(matches!(
            why("openai:RN50"),
            NotFound::OpenAiFileMissing {
                file: "RN50.pt",
                ..
            }
        ));
        assert!(matches!(why("org/model"), NotFound::Offline { repo, .. } if repo == "org/model"));
        assert_eq!(why(tmp.path().to_str().unwrap()), NotFound::NoConfig);
    }

    #[test]
    fn parses_hub_ids() {
        let id = HubId::parse("openai/clip-vit-base-patch32").unwrap();
        assert_eq!(id.repo, "openai/clip-vit-base-patch32");
        assert_eq!(id.revision, "main");
        assert_eq!(
            HubId::parse("timm/resnet50_clip.openai@v1.0")
                .unwrap()
                .revision,
            "v1.0"
        );
        for bad in ["clip", "a/b/c", "./x/y", "a/", "/b", "a/b@", "../a/b"] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
    }
}
