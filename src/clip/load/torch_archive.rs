//! PyTorch's zip archives: `torch.save` files (`pytorch_model.bin`, a `.pt`/`.pth` state dict)
//! and TorchScript archives (`torch.jit.save`, the format of OpenAI's `RN50.pt`, `ViT-B-32.pt`).
//!
//! Both are a zip with one top folder holding `data.pkl` (the pickled object) and `data/<key>`
//! (the raw little-endian bytes of each storage); a TorchScript archive adds `code/`,
//! `constants.pkl` and debug files, which are never read: nothing in the file is executed.
//! `data.pkl` is read by [`super::pickle`], and its result is flattened into `name → tensor`:
//! - a state dict (`{name: tensor}`) gives its own names;
//! - a TorchScript module is an object whose state is its attribute dict (parameters, buffers,
//!   submodules, `training`): tensors are named by their attribute path, as `state_dict()`
//!   names them (`visual.conv1.weight`, `transformer.resblocks.0.attn.in_proj_weight`).
//!
//! Every storage a tensor uses must be an archive entry of exactly its declared size, checked
//! when the archive is opened; a tensor's bytes are read only when it is asked for.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};

use super::pickle::{self, Limits, Object, Pickle, PickleError, StorageType, TensorRef, Value};

/// What an archive is read from: its file, or bytes already in memory.
trait Source: Read + Seek {}
impl<T: Read + Seek> Source for T {}

/// The name [`TorchArchive::open_tensors`] gives a file's lone tensor.
pub const LONE_TENSOR: &str = "tensor";

/// The largest `data.pkl` read. A traced CLIP of ViT-B/32's shape has one of 38 KB.
const MAX_PICKLE_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a readable zip archive (a truncated or damaged file?)")]
    Zip(#[source] zip::result::ZipError),
    #[error("archive entry `{entry}`")]
    Entry {
        entry: String,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("reading archive entry `{entry}`")]
    Read {
        entry: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no `*/data.pkl` in the archive: not a torch.save or TorchScript file")]
    NoDataPickle,
    #[error("several `*/data.pkl` records (`{first}`, `{second}`): not a single torch.save file")]
    SeveralRecords { first: String, second: String },
    #[error("the tensors are stored big-endian (`byteorder` says `{0}`); re-save the file on a little-endian machine")]
    ByteOrder(String),
    #[error("`{entry}` is {size} bytes, more than the {limit} read")]
    PickleTooLarge {
        entry: String,
        size: u64,
        limit: u64,
    },
    #[error("`{entry}`")]
    Pickle {
        entry: String,
        #[source]
        source: PickleError,
    },
    #[error("the pickled object is {0}, not a state dict or a TorchScript module")]
    NotTensors(String),
    #[error("`{name}` is named twice")]
    Duplicate { name: String },
    #[error("the module tree is deeper than {0} levels (a cycle?)")]
    TooDeep(usize),
    #[error("tensor `{name}`: storage `{entry}` is missing from the archive")]
    MissingStorage { name: String, entry: String },
    #[error("tensor `{name}`: storage `{entry}` holds {actual} bytes, but the pickle declares {numel} elements of {elem} bytes ({expected} bytes)")]
    StorageSize {
        name: String,
        entry: String,
        expected: u128,
        actual: u64,
        numel: u64,
        elem: usize,
    },
    #[error("`{entry}` is compressed ({method}); PyTorch stores archive entries uncompressed")]
    Compressed { entry: String, method: String },
    #[error(
        "storage `{entry}` claims {size} bytes, more than the whole archive ({archive} bytes)"
    )]
    EntryTooLarge {
        entry: String,
        size: u64,
        archive: u64,
    },
    #[error("tensor `{name}`: storage type {dtype:?} is not supported")]
    UnsupportedType { name: String, dtype: StorageType },
    #[error("no tensor `{0}`")]
    NoTensor(String),
    #[error("tensor `{name}`")]
    Tensor {
        name: String,
        #[source]
        source: candle_core::Error,
    },
}

/// What the archive's pickle was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    /// `torch.save` of a dict of tensors.
    StateDict,
    /// `torch.jit.save` of a module (a `constants.pkl` and `code/` beside `data.pkl`).
    TorchScript,
}

/// An opened archive: tensor names and views, storages read on demand.
pub struct TorchArchive {
    zip: RefCell<zip::ZipArchive<Box<dyn Source>>>,
    /// The top folder, with its trailing `/`.
    prefix: String,
    kind: ArchiveKind,
    tensors: BTreeMap<String, Rc<TensorRef>>,
    /// Bytes of the archive file: no stored entry can be larger.
    file_len: u64,
}

impl TorchArchive {
    pub fn open(path: &Path) -> Result<Self, ArchiveError> {
        Self::open_file(path, false)
    }

    /// [`TorchArchive::open`] of a file of tensors rather than a checkpoint: a lone tensor
    /// (`torch.save(t, path)`) is accepted too, under the name [`LONE_TENSOR`].
    pub fn open_tensors(path: &Path) -> Result<Self, ArchiveError> {
        Self::open_file(path, true)
    }

    fn open_file(path: &Path, lone_tensor: bool) -> Result<Self, ArchiveError> {
        let read_err = |source| ArchiveError::Read {
            entry: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let file_len = file.metadata().map_err(read_err)?.len();
        Self::from_source(Box::new(file), file_len, lone_tensor)
    }

    /// Reads an archive already in memory (the same checks as [`TorchArchive::open`]); used by
    /// the fuzz targets, which must not touch the filesystem.
    #[doc(hidden)]
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ArchiveError> {
        let len = bytes.len() as u64;
        Self::from_source(Box::new(std::io::Cursor::new(bytes)), len, false)
    }

    fn from_source(
        source: Box<dyn Source>,
        file_len: u64,
        lone_tensor: bool,
    ) -> Result<Self, ArchiveError> {
        let mut zip = zip::ZipArchive::new(source).map_err(ArchiveError::Zip)?;
        let mut record: Option<String> = None;
        for name in zip.file_names() {
            // A name that is not valid text cannot be one of PyTorch's entries.
            let Ok(name) = name else { continue };
            if let Some(prefix) = name.strip_suffix("data.pkl") {
                if prefix.ends_with('/') && prefix[..prefix.len() - 1].find('/').is_none() {
                    if let Some(first) = &record {
                        return Err(ArchiveError::SeveralRecords {
                            first: format!("{first}data.pkl"),
                            second: name.to_string(),
                        });
                    }
                    record = Some(prefix.to_string());
                }
            }
        }
        let prefix = record.ok_or(ArchiveError::NoDataPickle)?;
        let kind = if zip
            .index_for_name(&format!("{prefix}constants.pkl"))
            .is_some()
        {
            ArchiveKind::TorchScript
        } else {
            ArchiveKind::StateDict
        };
        if let Some(order) = read_small(&mut zip, &format!("{prefix}byteorder"), 64)? {
            let order = String::from_utf8_lossy(&order).trim().to_string();
            if order != "little" {
                return Err(ArchiveError::ByteOrder(order));
            }
        }
        let entry = format!("{prefix}data.pkl");
        let bytes =
            read_small(&mut zip, &entry, MAX_PICKLE_BYTES)?.ok_or(ArchiveError::NoDataPickle)?;
        let limits = Limits::default();
        let pickle = pickle::parse(&bytes, &limits)
            .map_err(|source| ArchiveError::Pickle { entry, source })?;
        let mut tensors = BTreeMap::new();
        match &pickle.root {
            Value::Tensor(t) if lone_tensor => {
                tensors.insert(LONE_TENSOR.to_string(), t.clone());
            }
            root => flatten(&pickle, root, "", 0, limits.max_depth, &mut tensors)?,
        }
        if tensors.is_empty() {
            return Err(ArchiveError::NotTensors(describe(&pickle, &pickle.root)));
        }
        let archive = TorchArchive {
            zip: RefCell::new(zip),
            prefix,
            kind,
            tensors,
            file_len,
        };
        archive.check_storages()?;
        Ok(archive)
    }

    pub fn kind(&self) -> ArchiveKind {
        self.kind
    }

    /// Tensor names with their shapes, sorted by name.
    pub fn shapes(&self) -> impl Iterator<Item = (&str, &[usize])> {
        self.tensors
            .iter()
            .map(|(name, t)| (name.as_str(), t.shape.as_slice()))
    }

    /// Reads one tensor in its stored type (floats as `F16`/`BF16`/`F32`/`F64`).
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor, ArchiveError> {
        let (stored, shape, bytes) = self.load_raw(name)?;
        let dtype = match stored {
            StorageType::F64 => DType::F64,
            StorageType::F32 => DType::F32,
            StorageType::F16 => DType::F16,
            StorageType::BF16 => DType::BF16,
            StorageType::I64 => DType::I64,
            StorageType::I32 => DType::I32,
            StorageType::I16 => DType::I16,
            StorageType::U8 | StorageType::Bool => DType::U8,
            dtype @ StorageType::I8 => {
                return Err(ArchiveError::UnsupportedType {
                    name: name.to_string(),
                    dtype,
                })
            }
        };
        Tensor::from_raw_buffer(&bytes, dtype, &shape, device).map_err(|source| {
            ArchiveError::Tensor {
                name: name.to_string(),
                source,
            }
        })
    }

    /// One tensor's element type, shape and row-major little-endian bytes, as stored.
    pub fn load_raw(&self, name: &str) -> Result<(StorageType, Vec<usize>, Vec<u8>), ArchiveError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ArchiveError::NoTensor(name.to_string()))?;
        let storage = self.read_storage(&t.storage.key)?;
        let elem = t.storage.dtype.size();
        let numel = t.numel();
        let offset = t.offset as usize;
        // Bounds were checked against the storage's length when the pickle was read, and the
        // storage's length against the entry when the archive was opened.
        let bytes = if numel == 0 {
            Vec::new()
        } else if t.is_contiguous() {
            storage[offset * elem..(offset + numel) * elem].to_vec()
        } else {
            gather(&storage, elem, offset, &t.shape, &t.stride)
        };
        Ok((t.storage.dtype, t.shape.clone(), bytes))
    }

    fn storage_entry(&self, key: &str) -> String {
        format!("{}data/{key}", self.prefix)
    }

    fn read_storage(&self, key: &str) -> Result<Vec<u8>, ArchiveError> {
        let entry = self.storage_entry(key);
        let mut zip = self.zip.borrow_mut();
        let mut file = zip.by_name(&entry).map_err(|source| ArchiveError::Entry {
            entry: entry.clone(),
            source,
        })?;
        let mut buf = Vec::with_capacity(file.size() as usize);
        file.read_to_end(&mut buf)
            .map_err(|source| ArchiveError::Read { entry, source })?;
        Ok(buf)
    }

    /// Every storage is an entry of exactly `numel · element size` bytes (the sizes come from the
    /// zip directory; nothing is read).
    fn check_storages(&self) -> Result<(), ArchiveError> {
        let mut zip = self.zip.borrow_mut();
        let mut seen = HashMap::new();
        for (name, t) in &self.tensors {
            let s = &t.storage;
            if seen.insert(s.key.clone(), ()).is_some() {
                continue;
            }
            let entry = self.storage_entry(&s.key);
            let actual = match zip.by_name(&entry) {
                Ok(f) if f.compression() != zip::CompressionMethod::Stored => {
                    return Err(ArchiveError::Compressed {
                        entry,
                        method: f.compression().to_string(),
                    })
                }
                // The zip directory's word alone must not size an allocation.
                Ok(f) if f.size() > self.file_len => {
                    return Err(ArchiveError::EntryTooLarge {
                        entry,
                        size: f.size(),
                        archive: self.file_len,
                    })
                }
                Ok(f) => f.size(),
                Err(zip::result::ZipError::FileNotFound) => {
                    return Err(ArchiveError::MissingStorage {
                        name: name.clone(),
                        entry,
                    })
                }
                Err(source) => return Err(ArchiveError::Entry { entry, source }),
            };
            let expected = s.numel as u128 * s.dtype.size() as u128;
            if expected != actual as u128 {
                return Err(ArchiveError::StorageSize {
                    name: name.clone(),
                    entry,
                    expected,
                    actual,
                    numel: s.numel,
                    elem: s.dtype.size(),
                });
            }
        }
        Ok(())
    }
}

/// Reads a whole entry of at most `limit` bytes; `None` when it does not exist.
fn read_small(
    zip: &mut zip::ZipArchive<Box<dyn Source>>,
    entry: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>, ArchiveError> {
    let mut file = match zip.by_name(entry) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(source) => {
            return Err(ArchiveError::Entry {
                entry: entry.to_string(),
                source,
            })
        }
    };
    if file.compression() != zip::CompressionMethod::Stored {
        return Err(ArchiveError::Compressed {
            entry: entry.to_string(),
            method: file.compression().to_string(),
        });
    }
    if file.size() > limit {
        return Err(ArchiveError::PickleTooLarge {
            entry: entry.to_string(),
            size: file.size(),
            limit,
        });
    }
    let mut buf = Vec::with_capacity(file.size() as usize);
    file.read_to_end(&mut buf)
        .map_err(|source| ArchiveError::Read {
            entry: entry.to_string(),
            source,
        })?;
    Ok(Some(buf))
}

/// Copies a strided view into row-major order, element by element.
fn gather(
    storage: &[u8],
    elem: usize,
    offset: usize,
    shape: &[usize],
    stride: &[usize],
) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel * elem);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..numel {
        let at = offset + index.iter().zip(stride).map(|(i, s)| i * s).sum::<usize>();
        out.extend_from_slice(&storage[at * elem..(at + 1) * elem]);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    out
}

/// Collects the tensors under `value`, named by their path from the root.
fn flatten(
    pickle: &Pickle,
    value: &Value,
    prefix: &str,
    depth: usize,
    max_depth: usize,
    out: &mut BTreeMap<String, Rc<TensorRef>>,
) -> Result<(), ArchiveError> {
    if depth > max_depth {
        return Err(ArchiveError::TooDeep(max_depth));
    }
    let entries: &[(Value, Value)] = match pickle.object(value) {
        Some(Object::Dict(entries)) => entries,
        // A TorchScript module: its state is the dict of its attributes.
        Some(Object::Instance {
            state: Some(state), ..
        }) => match pickle.object(state) {
            Some(Object::Dict(entries)) => entries,
            _ => return Ok(()),
        },
        _ => return Ok(()),
    };
    for (key, v) in entries {
        // Non-string keys are not attribute or parameter names; nothing of ours lives there.
        let Value::Str(key) = key else { continue };
        let name = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        match v {
            Value::Tensor(_) if out.contains_key(&name) => {
                return Err(ArchiveError::Duplicate { name });
            }
            Value::Tensor(t) => {
                out.insert(name, t.clone());
            }
            Value::Ref(_) => flatten(pickle, v, &name, depth + 1, max_depth, out)?,
            // Plain attributes (`training`, a `None` submodule slot): no tensors.
            _ => {}
        }
    }
    Ok(())
}

/// A few words on what a pickled value is, for errors.
fn describe(pickle: &Pickle, value: &Value) -> String {
    match value {
        Value::None => "None".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Int(_) => "an integer".into(),
        Value::Float(_) => "a float".into(),
        Value::Str(_) => "a string".into(),
        Value::Bytes(_) => "bytes".into(),
        Value::Tuple(_) => "a tuple".into(),
        Value::Global(g) => format!("the name {}.{}", g.module, g.name),
        Value::Storage(_) => "a bare storage".into(),
        Value::Tensor(_) => "a single tensor".into(),
        Value::Ref(_) => match pickle.object(value) {
            Some(Object::List(_)) => "a list".into(),
            Some(Object::Dict(_)) => "a dict without tensors".into(),
            Some(Object::Instance { class, .. }) => {
                format!(
                    "an object of {}.{} without tensors",
                    class.module, class.name
                )
            }
            None => "nothing".into(),
        },
    }
}
