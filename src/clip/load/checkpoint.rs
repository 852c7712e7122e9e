//! Reading checkpoint tensors, and accounting for every one of them.
//!
//! A model asks for each tensor by name and shape; a missing tensor or a wrong shape is an error
//! that names the file and the key, and after loading, any tensor the model did not ask for is
//! an error too (unless it is a known buffer), so a checkpoint that does not match its config is
//! never silently half-used.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::layout::{source_key, Layout, Transform};
use super::torch_archive::{ArchiveKind, TorchArchive};
use crate::clip::error::{Error, Result};
use crate::clip::precision::Precision;

/// Buffers that PyTorch saves beside the parameters but that carry no learned value.
const IGNORED_SUFFIXES: &[&str] = &["position_ids", "attn_mask", "num_batches_tracked"];

enum Source {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    /// A `torch.save` zip or a TorchScript archive, read by our own bounded pickle reader.
    Archive(TorchArchive),
}

/// Drops the pages of a file map under `bytes` from this process's resident set once they have
/// been copied out. A file-backed page comes back from the page cache if touched again, so no
/// value changes; without it a load held the checkpoint twice, the touched map and the copies
/// (SigLIP-B/16: a peak RSS of 1763 MiB for an 812 MB file). Only whole pages inside `bytes` are
/// released: a page shared with a neighbouring tensor stays.
fn release_mapped(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        let start = (bytes.as_ptr() as usize).next_multiple_of(page);
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: [start, end) lies inside a read-only file map that no one writes; dropping
            // its resident pages only makes the next read fetch them from the page cache. A
            // failure leaves the pages resident, which is harmless.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

/// The zip local-file-header signature that starts every PyTorch archive.
const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// The tensors of one checkpoint file, loaded on demand as f32, asked for by their
/// `transformers` names whatever the file's [`Layout`].
pub struct Checkpoint {
    file: PathBuf,
    layout: Layout,
    source: Source,
    shapes: BTreeMap<String, Vec<usize>>,
    used: RefCell<BTreeSet<String>>,
    /// Tensors already copied out of the file by [`Checkpoint::preload`], by stored name: the
    /// stored dtype and the tensor, floats already as f32.
    preloaded: RefCell<HashMap<String, (DType, Tensor)>>,
    /// How many parts of each preloaded fused tensor have been handed out.
    parts_taken: RefCell<HashMap<String, usize>>,
    device: Device,
    precision: Precision,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, a PyTorch `torch.save` zip (`.bin`, `.pt`, `.pth`) or a
    /// TorchScript archive (OpenAI's `RN50.pt`, ...); archives are told apart by content.
    pub fn open(file: &Path, layout: Layout, device: &Device) -> Result<Self> {
        let bad = |msg: String| Error::Checkpoint {
            file: file.into(),
            msg,
        };
        let meta = std::fs::metadata(file).map_err(|e| Error::io(file, e))?;
        if meta.len() == 0 {
            return Err(bad("the file is empty".into()));
        }
        let is_zip = starts_with(file, ZIP_MAGIC)?;
        let is_safetensors = file.extension().is_some_and(|e| e == "safetensors");
        let (source, shapes) = if is_safetensors && !is_zip {
            // SAFETY: the map lives only while tensors are copied out of it at load time; a file
            // changed underneath us during that window gives wrong numbers, as with any reader.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(file) }
                .map_err(|e| bad(format!("not a valid safetensors file ({e})")))?;
            let shapes = st
                .tensors()
                .into_iter()
                .map(|(name, view)| (name, view.shape().to_vec()))
                .collect();
            (Source::Safetensors(st), shapes)
        } else if is_zip {
            let archive = TorchArchive::open(file).map_err(|source| Error::Archive {
                file: file.into(),
                source: Box::new(source),
            })?;
            let shapes = archive
                .shapes()
                .map(|(name, shape)| (name.to_string(), shape.to_vec()))
                .collect();
            (Source::Archive(archive), shapes)
        } else {
            return Err(bad(
                "neither a safetensors file nor a PyTorch zip archive (files written by \
                 torch.save before PyTorch 1.6 are not read: load and save them again with a \
                 current PyTorch)"
                    .into(),
            ));
        };
        Ok(Checkpoint {
            file: file.into(),
            layout,
            source,
            shapes,
            used: RefCell::new(BTreeSet::new()),
            preloaded: RefCell::new(HashMap::new()),
            parts_taken: RefCell::new(HashMap::new()),
            device: device.clone(),
            precision: Precision::F32,
        })
    }

    /// Copies every tensor of a safetensors file out of the map at once, on all of rayon's
    /// threads, for a caller about to ask for all of them ([`Clip::load`]): the model asks
    /// one tensor at a time, and most of a load is the kernel handing out and zeroing fresh
    /// pages for the copies, which one thread does at a fraction of the rate of several. A
    /// tensor that fails to load here is left to [`Checkpoint::get`], which reports it; other
    /// sources are read on demand as before.
    ///
    /// [`Clip::load`]: crate::clip::Clip::load
    pub fn preload(&self) {
        let Source::Safetensors(st) = &self.source else {
            return;
        };
        let device = &self.device;
        let names: Vec<&String> = self.shapes.keys().collect();
        let loaded: Vec<(String, (DType, Tensor))> = names
            .into_par_iter()
            .filter_map(|name| {
                let view = st.get(name).ok()?;
                let stored = candle_core::safetensors::Load::load(&view, device).ok()?;
                release_mapped(view.data());
                let dtype = stored.dtype();
                let tensor = match dtype {
                    DType::F16 | DType::BF16 | DType::F64 => stored.to_dtype(DType::F32).ok()?,
                    _ => stored,
                };
                Some((name.clone(), (dtype, tensor)))
            })
            .collect();
        self.preloaded.borrow_mut().extend(loaded);
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Whether the file is a TorchScript archive (a `torch.jit.save` module, as OpenAI ships).
    pub fn is_torchscript(&self) -> bool {
        matches!(&self.source, Source::Archive(a) if a.kind() == ArchiveKind::TorchScript)
    }

    /// Every tensor name with its shape as stored in the file.
    pub fn stored_shapes(&self) -> &BTreeMap<String, Vec<usize>> {
        &self.shapes
    }

    pub fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    /// All tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(String::as_str)
    }

    /// The shape of the tensor the model calls `name`, when the checkpoint has it.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (key, transform) = source_key(self.layout, name);
        let stored = self.shapes.get(&key)?;
        Some(match transform {
            Transform::Identity => stored.clone(),
            Transform::Transpose => stored.iter().rev().copied().collect(),
            Transform::Part { of, .. } => {
                let mut s = stored.clone();
                if let Some(rows) = s.first_mut() {
                    *rows /= of.max(1);
                }
                s
            }
            Transform::Unsqueezed => stored.iter().skip(1).copied().collect(),
        })
    }

    /// The weight the model calls `name`, which must have shape `expected` and a float type,
    /// as f32.
    pub fn get(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.load(name, expected, false)
    }

    /// A buffer that holds a count rather than a weight (OpenAI's `input_resolution`,
    /// `context_length`, `vocab_size`, stored as integers), as f32.
    pub fn get_count(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.load(name, expected, true)
    }

    fn load(&self, name: &str, expected: &[usize], integers: bool) -> Result<Tensor> {
        let (key, transform) = source_key(self.layout, name);
        let Some(stored) = self.shapes.get(&key) else {
            return Err(Error::MissingTensor {
                file: self.file.clone(),
                name: key,
                expected: stored_shape(expected, transform),
            });
        };
        let wanted = stored_shape(expected, transform);
        if *stored != wanted {
            return Err(Error::TensorShape {
                file: self.file.clone(),
                name: key,
                expected: wanted,
                actual: stored.clone(),
            });
        }
        let bad = |e: candle_core::Error| Error::Checkpoint {
            file: self.file.clone(),
            msg: format!("tensor `{key}`: {e}"),
        };
        let preloaded = self.take_preloaded(&key, transform);
        let (dtype, tensor) = match (preloaded, &self.source) {
            (Some(found), _) => found,
            (None, Source::Safetensors(st)) => {
                let t = st.load(&key, &self.device).map_err(bad)?;
                (t.dtype(), t)
            }
            (None, Source::Archive(archive)) => {
                let t = archive
                    .load(&key, &self.device)
                    .map_err(|source| Error::Archive {
                        file: self.file.clone(),
                        source: Box::new(source),
                    })?;
                (t.dtype(), t)
            }
        };
        // Integer storage converts to f32 without complaint, but a weight stored as integers
        // (a wrong dtype written by a broken converter) holds nothing a model can use.
        if !integers && !matches!(dtype, DType::F32 | DType::F16 | DType::BF16 | DType::F64) {
            return Err(Error::TensorDtype {
                file: self.file.clone(),
                name: key,
                dtype: format!("{dtype:?}"),
            });
        }
        self.used.borrow_mut().insert(key);
        let tensor = tensor.to_dtype(DType::F32)?;
        let tensor = match transform {
            Transform::Identity => tensor,
            Transform::Transpose => tensor.t()?,
            Transform::Part { index, .. } => {
                let rows = expected.first().copied().unwrap_or(0);
                tensor.narrow(0, index * rows, rows)?
            }
            Transform::Unsqueezed => tensor.squeeze(0)?,
        };
        Ok(tensor.contiguous()?)
    }

    /// The preloaded tensor stored under `key`, if any, handed out once: a fused tensor is
    /// asked for once per part and stays until its last part is taken, so that the copies
    /// never hold the whole and all its parts longer than the load of one layer.
    fn take_preloaded(&self, key: &str, transform: Transform) -> Option<(DType, Tensor)> {
        let mut preloaded = self.preloaded.borrow_mut();
        let Transform::Part { of, .. } = transform else {
            return preloaded.remove(key);
        };
        let found = preloaded.get(key).cloned()?;
        let mut parts = self.parts_taken.borrow_mut();
        let taken = parts.entry(key.to_string()).or_insert(0);
        *taken += 1;
        if *taken >= of {
            preloaded.remove(key);
        }
        Some(found)
    }

    /// The tensor stored under `key` (the file's own name), as stored: its dtype and shape.
    pub fn stored(&self, key: &str) -> Result<Tensor> {
        match &self.source {
            Source::Safetensors(st) => st.load(key, &self.device).map_err(|e| Error::Checkpoint {
                file: self.file.clone(),
                msg: format!("tensor `{key}`: {e}"),
            }),
            Source::Archive(archive) => {
                (archive.load(key, &self.device)).map_err(|source| Error::Archive {
                    file: self.file.clone(),
                    source: Box::new(source),
                })
            }
        }
    }

    /// The arithmetic the model built from this checkpoint multiplies in (f32 unless set).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// A view that prefixes every name with `prefix.`, as the model tree descends.
    pub fn scope(&self, prefix: &str) -> Scope<'_> {
        Scope {
            checkpoint: self,
            prefix: prefix.to_string(),
        }
    }

    /// Fails when the checkpoint holds learned tensors that nobody asked for: the sign of a
    /// config that describes a smaller model than the weights, or of a different architecture.
    pub fn ensure_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        let unused: Vec<&String> = self
            .shapes
            .keys()
            .filter(|name| !used.contains(*name))
            .filter(|name| !IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s)))
            .collect();
        match unused.first() {
            None => Ok(()),
            Some(example) => Err(Error::UnusedTensors {
                file: self.file.clone(),
                count: unused.len(),
                example: example.to_string(),
            }),
        }
    }
}

/// Whether the file begins with `magic` (false for a shorter file).
fn starts_with(file: &Path, magic: &[u8]) -> Result<bool> {
    use std::io::Read;
    let mut head = Vec::with_capacity(magic.len());
    std::fs::File::open(file)
        .and_then(|f| f.take(magic.len() as u64).read_to_end(&mut head))
        .map_err(|e| Error::io(file, e))?;
    Ok(head == magic)
}

/// The stored shape of a tensor that `transform` turns into `expected`.
fn stored_shape(expected: &[usize], transform: Transform) -> Vec<usize> {
    match transform {
        Transform::Identity => expected.to_vec(),
        Transform::Transpose => expected.iter().rev().copied().collect(),
        Transform::Part { of, .. } => {
            let mut s = expected.to_vec();
            if let Some(rows) = s.first_mut() {
                *rows *= of;
            }
            s
        }
        Transform::Unsqueezed => std::iter::once(1).chain(expected.iter().copied()).collect(),
    }
}

/// A position in the checkpoint's key tree, like candle's `VarBuilder::pp`.
#[derive(Clone)]
pub struct Scope<'a> {
    checkpoint: &'a Checkpoint,
    prefix: String,
}

impl<'a> Scope<'a> {
    pub fn pp(&self, name: impl std::fmt::Display) -> Scope<'a> {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Scope {
            checkpoint: self.checkpoint,
            prefix,
        }
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.checkpoint.get(&self.pp(name).prefix, shape)
    }

    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.checkpoint.shape(&self.pp(name).prefix)
    }

    /// The precision the model's linear layers are built for.
    pub fn precision(&self) -> Precision {
        self.checkpoint.precision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of F32 tensors `(name, shape, values)`, in order.
    fn safetensors(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
        let (mut header, mut data) = (serde_json::Map::new(), Vec::new());
        for (name, shape, values) in tensors {
            let start = data.len();
            data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let h = serde_json::Value::Object(header).to_string().into_bytes();
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(data);
        out
    }

    #[test]
    fn preloading_releases_the_map_without_changing_a_value() {
        // Tensors over several pages, starting off page boundaries, with a small one between.
        let big = |seed: usize| (0..3 * 5000).map(move |i| ((i * 31 + seed) % 997) as f32 - 498.0);
        let tensors = [
            ("a", vec![3, 5000], big(1).collect::<Vec<f32>>()),
            ("b", vec![7], (0..7).map(|i| i as f32 * 0.5).collect()),
            ("c", vec![3, 5000], big(2).collect()),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, safetensors(&tensors)).unwrap();
        let cp = Checkpoint::open(&path, Layout::Transformers, &Device::Cpu).unwrap();
        cp.preload();
        for (name, shape, values) in &tensors {
            let got = cp.get(name, shape).unwrap().flatten_all().unwrap();
            assert_eq!(&got.to_vec1::<f32>().unwrap(), values, "{name}");
            // The released pages read back from the file as they were.
            let Source::Safetensors(st) = &cp.source else {
                unreachable!()
            };
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(st.get(name).unwrap().data(), &bytes[..], "{name}");
        }
    }
}
