//! Arrays written by other programs: numpy's `.npy` and `.npz`, safetensors, and PyTorch's
//! `torch.save` files (read by our own pickle reader, which executes nothing).
//!
//! Every reader ends in the same place: an element type, a shape and the row-major bytes,
//! checked against each other before anything is allocated from the shape, then widened to
//! `f32` (features) or `i64` (labels). A file holding several arrays (`.npz`, safetensors, a
//! pickled dict) needs the array's name unless it holds exactly one.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::clip::load::torch_archive::{ArchiveError, TorchArchive};
use crate::clip::load::torch_pickle::StorageType;

/// Where an array is: a file and, for a file of several arrays, its name there; or an array
/// the caller holds in memory ([`ArraySource::in_memory`]), read as a `.npy` file's would be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArraySource {
    /// The file; for an array in memory, its label (`train features (in memory)`), which the
    /// messages show in place of a file.
    pub path: PathBuf,
    /// The array's name in an `.npz` (without `.npy`), a safetensors file or a pickled dict;
    /// `None`: the file's only array.
    pub name: Option<String>,
    /// The array's type, shape and bytes, when it is in memory rather than in `path`.
    memory: Option<Arc<Raw>>,
}

impl ArraySource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ArraySource {
            path: path.into(),
            name: None,
            memory: None,
        }
    }

    pub fn named(path: impl Into<PathBuf>, name: &str) -> Self {
        ArraySource {
            path: path.into(),
            name: Some(name.to_string()),
            memory: None,
        }
    }

    /// An array in memory, as numpy describes it: its type string (`dtype.str`: `<f4`, `<i8`,
    /// `|u1`, ...), its shape and its C-order bytes. What a `.npy` file with this header and
    /// data would give, with the same checks: a type numpy writes for plain numbers, and bytes
    /// that are exactly the shape's. `label` (`train features`) names it in messages.
    pub fn in_memory(
        label: &str,
        dtype: &str,
        shape: Vec<usize>,
        mut bytes: Vec<u8>,
    ) -> Result<Self, ArrayError> {
        let path = PathBuf::from(format!("{label} (in memory)"));
        let (big_endian, elem) = npy_elem(dtype).ok_or_else(|| ArrayError::ElementType {
            path: path.clone(),
            found: dtype.to_string(),
            expected: NPY_TYPES,
        })?;
        if big_endian {
            for c in bytes.chunks_exact_mut(elem.size()) {
                c.reverse();
            }
        }
        let raw = checked(&path, elem, shape, bytes)?;
        Ok(ArraySource {
            path,
            name: None,
            memory: Some(Arc::new(raw)),
        })
    }

    /// Whether the array is in memory ([`ArraySource::in_memory`]) rather than in a file.
    pub fn is_in_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// For an array in memory: `xxh3-128:` and the xxHash3-128 of its type, shape and
    /// little-endian bytes (what an import records in place of a file's hash).
    pub fn memory_hash(&self) -> Option<String> {
        let raw = self.memory.as_deref()?;
        let mut h = crate::features::ContentHash::default();
        h.field(format!("{:?}", raw.elem).as_bytes());
        for d in &raw.shape {
            h.field(&(*d as u64).to_le_bytes());
        }
        h.field(&raw.bytes);
        Some(format!("xxh3-128:{}", h.hex128()))
    }
}

impl std::fmt::Display for ArraySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{} (array `{n}`)", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// Why an array could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: unknown array file type; expected .npy, .npz, .safetensors, or a torch.save file (.pt, .pth, .bin)", path.display())]
    UnknownType { path: PathBuf },
    #[error("{}: not a .npy array: {msg}", path.display())]
    Npy { path: PathBuf, msg: String },
    #[error("{}: the array is stored in Fortran (column-major) order; save it in C order (numpy.ascontiguousarray) first", path.display())]
    FortranOrder { path: PathBuf },
    #[error("{}: element type `{found}` is not supported; expected {expected}", path.display())]
    ElementType {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    #[error("{}: shape {shape:?} of {elem}-byte elements needs {expected} bytes, the file holds {actual}", path.display())]
    Size {
        path: PathBuf,
        shape: Vec<usize>,
        elem: usize,
        expected: u128,
        actual: usize,
    },
    #[error("{}: no array `{name}`; it holds {}", path.display(), list(available))]
    NoArray {
        path: PathBuf,
        name: String,
        available: Vec<String>,
    },
    #[error("{}: a .npy file holds one array, without a name; there is no array `{name}` in it", path.display())]
    NpyName { path: PathBuf, name: String },
    #[error("{}: holds {} arrays ({}); name the one to read", path.display(), available.len(), list(available))]
    Unnamed {
        path: PathBuf,
        available: Vec<String>,
    },
    #[error("{}: not a readable .npz (zip) archive: {source}", path.display())]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("{}: `{entry}` is compressed with {method}; numpy writes stored or deflated entries", path.display())]
    Compression {
        path: PathBuf,
        entry: String,
        method: String,
    },
    #[error("{}: not a readable safetensors file: {msg}", path.display())]
    Safetensors { path: PathBuf, msg: String },
    #[error("{}: cannot read the PyTorch file", path.display())]
    Torch {
        path: PathBuf,
        #[source]
        source: Box<ArchiveError>,
    },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "no arrays".into();
    }
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An element type as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Elem {
    F16,
    BF16,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Bool,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::I8 | Elem::U8 | Elem::Bool => 1,
            Elem::F16 | Elem::BF16 | Elem::I16 | Elem::U16 => 2,
            Elem::F32 | Elem::I32 | Elem::U32 => 4,
            Elem::F64 | Elem::I64 | Elem::U64 => 8,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, Elem::F16 | Elem::BF16 | Elem::F32 | Elem::F64)
    }

    fn from_storage(t: StorageType) -> Self {
        match t {
            StorageType::F64 => Elem::F64,
            StorageType::F32 => Elem::F32,
            StorageType::F16 => Elem::F16,
            StorageType::BF16 => Elem::BF16,
            StorageType::I64 => Elem::I64,
            StorageType::I32 => Elem::I32,
            StorageType::I16 => Elem::I16,
            StorageType::I8 => Elem::I8,
            StorageType::U8 => Elem::U8,
            StorageType::Bool => Elem::Bool,
        }
    }
}

/// What the caller wants the values as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Features: any float type, widened or narrowed to `f32`.
    Floats,
    /// Labels: any integer type, as `i64`.
    Integers,
}

impl Want {
    fn expected(self) -> &'static str {
        match self {
            Want::Floats => "a float type (float16, bfloat16, float32, float64)",
            Want::Integers => "an integer type (int8 to int64, uint8 to uint64)",
        }
    }
}

/// An array read and converted.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<T> {
    pub shape: Vec<usize>,
    /// Row-major.
    pub values: Vec<T>,
}

/// A raw array: element type, shape, little-endian row-major bytes (checked against each other).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Raw {
    elem: Elem,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Reads an array of floats, as `f32`.
pub fn read_floats(source: &ArraySource) -> Result<Array<f32>, ArrayError> {
    let raw = read_raw(source, Want::Floats)?;
    let values = match raw.elem {
        Elem::F32 => le_chunks::<4>(&raw.bytes).map(f32::from_le_bytes).collect(),
        Elem::F64 => (le_chunks::<8>(&raw.bytes))
            .map(|b| f64::from_le_bytes(b) as f32)
            .collect(),
        Elem::F16 => (le_chunks::<2>(&raw.bytes))
            .map(|b| f16_to_f32(u16::from_le_bytes(b)))
            .collect(),
        // bfloat16 is the upper half of an f32.
        Elem::BF16 => (le_chunks::<2>(&raw.bytes))
            .map(|b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16))
            .collect(),
        _ => unreachable_type(&source.path, raw.elem, Want::Floats)?,
    };
    Ok(Array {
        shape: raw.shape,
        values,
    })
}

/// Reads an array of integers, as `i64`. Unsigned 64-bit values above `i64::MAX` become
/// negative and are refused downstream as out-of-range labels.
pub fn read_integers(source: &ArraySource) -> Result<Array<i64>, ArrayError> {
    let raw = read_raw(source, Want::Integers)?;
    let b = &raw.bytes;
    let values = match raw.elem {
        Elem::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
        Elem::U8 | Elem::Bool => b.iter().map(|&x| x as i64).collect(),
        Elem::I16 => le_chunks::<2>(b)
            .map(|c| i16::from_le_bytes(c) as i64)
            .collect(),
        Elem::U16 => le_chunks::<2>(b)
            .map(|c| u16::from_le_bytes(c) as i64)
            .collect(),
        Elem::I32 => le_chunks::<4>(b)
            .map(|c| i32::from_le_bytes(c) as i64)
            .collect(),
        Elem::U32 => le_chunks::<4>(b)
            .map(|c| u32::from_le_bytes(c) as i64)
            .collect(),
        Elem::I64 => le_chunks::<8>(b).map(i64::from_le_bytes).collect(),
        Elem::U64 => le_chunks::<8>(b)
            .map(|c| u64::from_le_bytes(c) as i64)
            .collect(),
        _ => unreachable_type(&source.path, raw.elem, Want::Integers)?,
    };
    Ok(Array {
        shape: raw.shape,
        values,
    })
}

/// `read_raw` already refused the other types; this keeps the match total without a panic.
fn unreachable_type<T>(path: &Path, elem: Elem, want: Want) -> Result<Vec<T>, ArrayError> {
    Err(ArrayError::ElementType {
        path: path.to_path_buf(),
        found: format!("{elem:?}"),
        expected: want.expected(),
    })
}

fn le_chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .map(|c| c.try_into().unwrap_or([0; N]))
}

/// IEEE half to single precision, exactly (subnormals, infinities and NaN included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        // Subnormal: frac · 2^-24, exact in f32.
        (0, f) => {
            let v = f as f32 * 2f32.powi(-24);
            return if sign == 0 { v } else { -v };
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// The array's type, shape and bytes, by the file's type.
fn read_raw(source: &ArraySource, want: Want) -> Result<Raw, ArrayError> {
    let path = &source.path;
    if let Some(raw) = &source.memory {
        return check_want(path, Raw::clone(raw), want);
    }
    let ext = (path.extension())
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let raw = match ext.as_str() {
        "npy" => {
            if let Some(name) = &source.name {
                return Err(ArrayError::NpyName {
                    path: path.clone(),
                    name: name.clone(),
                });
            }
            let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
            parse_npy(path, &bytes)?
        }
        "npz" => read_npz(path, source.name.as_deref())?,
        "safetensors" => read_safetensors(path, source.name.as_deref())?,
        "pt" | "pth" | "bin" => read_torch(path, source.name.as_deref())?,
        _ => return Err(ArrayError::UnknownType { path: path.clone() }),
    };
    check_want(path, raw, want)
}

/// The array when its type is of the kind wanted (floats or integers).
fn check_want(path: &Path, raw: Raw, want: Want) -> Result<Raw, ArrayError> {
    let ok = match want {
        Want::Floats => raw.elem.is_float(),
        Want::Integers => !raw.elem.is_float(),
    };
    if !ok {
        return Err(ArrayError::ElementType {
            path: path.to_path_buf(),
            found: format!("{:?}", raw.elem).to_lowercase(),
            expected: want.expected(),
        });
    }
    Ok(raw)
}

fn io(path: &Path, source: std::io::Error) -> ArrayError {
    ArrayError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `bytes` holds exactly the elements `shape` says, without overflow.
fn checked(path: &Path, elem: Elem, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Raw, ArrayError> {
    let numel = (shape.iter()).try_fold(1u128, |n, &d| n.checked_mul(d as u128));
    let expected = numel.and_then(|n| n.checked_mul(elem.size() as u128));
    if expected != Some(bytes.len() as u128) {
        return Err(ArrayError::Size {
            path: path.to_path_buf(),
            shape,
            elem: elem.size(),
            expected: expected.unwrap_or(u128::MAX),
            actual: bytes.len(),
        });
    }
    Ok(Raw { elem, shape, bytes })
}

/// numpy's format: `\x93NUMPY`, version (1.0: a u16 header length; 2.0 and 3.0: u32; 3.0's
/// header is UTF-8), a Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape':
/// (M, E), }` padded with spaces, then the data.
fn parse_npy(path: &Path, bytes: &[u8]) -> Result<Raw, ArrayError> {
    let bad = |msg: &str| ArrayError::Npy {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no `\\x93NUMPY` magic string at the start"));
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(&format!("format version {v}, expected 1, 2 or 3"))),
    };
    let header = bytes
        .get(start..start.saturating_add(len))
        .ok_or_else(|| bad("the header is longer than the file"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("the header is not text"))?;
    let (descr, fortran, shape) = npy_header(header).ok_or_else(|| {
        bad("the header is not a dict of `descr`, `fortran_order` and `shape` (structured arrays are not supported)")
    })?;
    if fortran {
        return Err(ArrayError::FortranOrder {
            path: path.to_path_buf(),
        });
    }
    let (big_endian, elem) = npy_elem(&descr).ok_or_else(|| ArrayError::ElementType {
        path: path.to_path_buf(),
        found: descr.clone(),
        expected: NPY_TYPES,
    })?;
    let mut data = bytes[start + len..].to_vec();
    if big_endian {
        for c in data.chunks_exact_mut(elem.size()) {
            c.reverse();
        }
    }
    checked(path, elem, shape, data)
}

/// `descr`, `fortran_order` and `shape` of an npy header.
fn npy_header(header: &str) -> Option<(String, bool, Vec<usize>)> {
    let value = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?;
        Some(rest.trim_start())
    };
    let descr = value("descr")?.strip_prefix('\'')?;
    let descr = descr[..descr.find('\'')?].to_string();
    let fortran = value("fortran_order")?;
    let fortran = match () {
        _ if fortran.starts_with("True") => true,
        _ if fortran.starts_with("False") => false,
        _ => return None,
    };
    let shape = value("shape")?.strip_prefix('(')?;
    let shape = &shape[..shape.find(')')?];
    let dims = (shape.split(',').map(str::trim).filter(|d| !d.is_empty()))
        .map(|d| d.trim_end_matches('L').parse().ok())
        .collect::<Option<Vec<usize>>>()?;
    Some((descr, fortran, dims))
}

/// What an npy type string must be.
const NPY_TYPES: &str = "a plain number type (`<f4`, `<f2`, `<f8`, `<i8`, ...)";

/// An npy type string (`<f4`, `|u1`, `>i8`): big-endian, element type.
fn npy_elem(descr: &str) -> Option<(bool, Elem)> {
    let mut chars = descr.chars();
    let order = chars.next()?;
    let big = match order {
        '<' | '|' | '=' => false,
        '>' => true,
        _ => return None,
    };
    let elem = match chars.as_str() {
        "f2" => Elem::F16,
        "f4" => Elem::F32,
        "f8" => Elem::F64,
        "i1" => Elem::I8,
        "i2" => Elem::I16,
        "i4" => Elem::I32,
        "i8" => Elem::I64,
        "u1" => Elem::U8,
        "u2" => Elem::U16,
        "u4" => Elem::U32,
        "u8" => Elem::U64,
        "b1" => Elem::Bool,
        _ => return None,
    };
    Some((big, elem))
}

/// The one name `name` asks for among `available`, or the only one.
fn pick(path: &Path, name: Option<&str>, available: Vec<String>) -> Result<String, ArrayError> {
    match name {
        Some(n) if available.iter().any(|a| a == n) => Ok(n.to_string()),
        Some(n) => Err(ArrayError::NoArray {
            path: path.to_path_buf(),
            name: n.to_string(),
            available,
        }),
        None if available.len() == 1 => Ok(available[0].clone()),
        None => Err(ArrayError::Unnamed {
            path: path.to_path_buf(),
            available,
        }),
    }
}

/// `numpy.savez` (stored) or `numpy.savez_compressed` (deflated): a zip of `<name>.npy`.
fn read_npz(path: &Path, name: Option<&str>) -> Result<Raw, ArrayError> {
    let zip_err = |source| ArrayError::Zip {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let file_len = file.metadata().map_err(|e| io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(file).map_err(zip_err)?;
    let names: Vec<String> = (zip.file_names())
        .filter_map(|n| n.ok()?.strip_suffix(".npy").map(str::to_string))
        .collect();
    let name = pick(path, name, names)?;
    let entry = format!("{name}.npy");
    // The raw entry: this zip build has no decompressors, and flate2 inflates deflate.
    let raw = zip.by_name_raw(entry.as_bytes()).map_err(zip_err)?;
    let method = raw.compression();
    let size = raw.size();
    let mut bytes = Vec::new();
    // Compared with the crate's constants: without its decompressors, deflate is not a variant
    // of its own.
    let read = if method == zip::CompressionMethod::STORE {
        raw.take(file_len).read_to_end(&mut bytes)
    } else if method == zip::CompressionMethod::DEFLATE {
        // At most the declared size: a hostile entry cannot inflate without bound.
        (flate2::read::DeflateDecoder::new(raw).take(size)).read_to_end(&mut bytes)
    } else {
        return Err(ArrayError::Compression {
            path: path.to_path_buf(),
            entry,
            method: method.to_string(),
        });
    };
    read.map_err(|e| io(path, e))?;
    parse_npy(&path.join(&entry), &bytes)
}

fn read_safetensors(path: &Path, name: Option<&str>) -> Result<Raw, ArrayError> {
    use safetensors::Dtype as D;
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| ArrayError::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let name = pick(path, name, names)?;
    let t = st.tensor(&name).map_err(|e| ArrayError::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let elem = match t.dtype() {
        D::F16 => Elem::F16,
        D::BF16 => Elem::BF16,
        D::F32 => Elem::F32,
        D::F64 => Elem::F64,
        D::I8 => Elem::I8,
        D::I16 => Elem::I16,
        D::I32 => Elem::I32,
        D::I64 => Elem::I64,
        D::U8 => Elem::U8,
        D::U16 => Elem::U16,
        D::U32 => Elem::U32,
        D::U64 => Elem::U64,
        D::BOOL => Elem::Bool,
        other => {
            return Err(ArrayError::ElementType {
                path: path.to_path_buf(),
                found: format!("{other:?}"),
                expected: "a float or integer type",
            })
        }
    };
    checked(path, elem, t.shape().to_vec(), t.data().to_vec())
}

/// `torch.save(tensor)` or `torch.save({name: tensor, ...})`.
fn read_torch(path: &Path, name: Option<&str>) -> Result<Raw, ArrayError> {
    let torch = |e: ArchiveError| ArrayError::Torch {
        path: path.to_path_buf(),
        source: Box::new(e),
    };
    let archive = TorchArchive::open_tensors(path).map_err(torch)?;
    let names = archive.shapes().map(|(n, _)| n.to_string()).collect();
    let name = pick(path, name, names)?;
    let (stored, shape, bytes) = archive.load_raw(&name).map_err(torch)?;
    checked(path, Elem::from_storage(stored), shape, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8001), -(2f32.powi(-24)));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn npy_headers_of_numpy_parse() {
        let (d, f, s) =
            npy_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }").unwrap();
        assert_eq!((d.as_str(), f, s), ("<f4", false, vec![3, 4]));
        let (_, _, s) =
            npy_header("{'descr': '<i8', 'fortran_order': False, 'shape': (7,), }").unwrap();
        assert_eq!(s, vec![7]);
        let (_, f, s) =
            npy_header("{'descr': '>f8', 'fortran_order': True, 'shape': (), }").unwrap();
        assert!(f);
        assert!(s.is_empty());
        assert!(
            npy_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }")
                .is_none()
        );
    }
}
