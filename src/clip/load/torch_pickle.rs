//! The two calls of PyTorch's unpickler that mean something to us, as pure functions over
//! [`super::pickle`]'s inert values: `persistent_load` of a storage id, and
//! `torch._utils._rebuild_tensor_v2`, whose view is checked against its storage's declared length
//! before anyone allocates for it.

use std::rc::Rc;

use super::pickle::Value;

/// The element type of a storage, from its class name (`torch.HalfStorage`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageType {
    fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => StorageType::F64,
            "FloatStorage" => StorageType::F32,
            "HalfStorage" => StorageType::F16,
            "BFloat16Storage" => StorageType::BF16,
            "LongStorage" => StorageType::I64,
            "IntStorage" => StorageType::I32,
            "ShortStorage" => StorageType::I16,
            "CharStorage" => StorageType::I8,
            "ByteStorage" => StorageType::U8,
            "BoolStorage" => StorageType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageType::F64 | StorageType::I64 => 8,
            StorageType::F32 | StorageType::I32 => 4,
            StorageType::F16 | StorageType::BF16 | StorageType::I16 => 2,
            StorageType::I8 | StorageType::U8 | StorageType::Bool => 1,
        }
    }
}

/// A storage named by a persistent id: its bytes are the archive entry `data/<key>`.
#[derive(Debug, PartialEq, Eq)]
pub struct Storage {
    pub key: String,
    pub dtype: StorageType,
    /// Elements, as declared by the pickle (checked against the archive entry by its reader).
    pub numel: u64,
}

/// A tensor: a strided view of a storage, all in elements.
#[derive(Debug)]
pub struct TensorRef {
    pub storage: Rc<Storage>,
    pub offset: u64,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

impl TensorRef {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the view is the storage's elements `offset..offset + numel` in row-major order.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&size, &stride) in self.shape.iter().zip(&self.stride).rev() {
            if size != 1 && stride != expected {
                return false;
            }
            expected *= size;
        }
        true
    }
}

/// Why a persistent id or a tensor's rebuild arguments are not what PyTorch writes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TorchObjectError {
    #[error("tensor: {found} arguments, expected at least 4")]
    Arguments { found: usize },
    #[error("tensor: the first argument is not a storage")]
    NotAStorage,
    #[error("tensor: the storage offset is not a non-negative integer")]
    Offset,
    #[error("tensor: the {what} is not a tuple")]
    NotATuple { what: &'static str },
    #[error("tensor: {found} dimensions (at most {limit})")]
    Dimensions { found: usize, limit: usize },
    #[error("tensor: {what} {value} is too large")]
    TooLarge { what: &'static str, value: i64 },
    #[error("tensor: the {what} holds something other than a non-negative integer")]
    NotACount { what: &'static str },
    #[error("tensor: size {shape:?} and stride {stride:?} differ in length")]
    Rank {
        shape: Vec<usize>,
        stride: Vec<usize>,
    },
    #[error("tensor: {what} {dims:?} overflows")]
    Overflow {
        what: &'static str,
        dims: Vec<usize>,
    },
    #[error(
        "tensor: a view of size {shape:?}, stride {stride:?} at offset {offset} reaches element \
         {last} of storage `{storage}`, which declares {numel} elements"
    )]
    OutsideStorage {
        shape: Vec<usize>,
        stride: Vec<usize>,
        offset: u64,
        last: u64,
        storage: String,
        numel: u64,
    },
    #[error("persistent id: not a tuple")]
    IdNotATuple,
    #[error("persistent id: expected ('storage', torch.<Type>Storage, key, location, numel)")]
    IdShape,
    #[error("persistent id: unknown kind `{kind}`, expected `storage`")]
    IdKind { kind: String },
    #[error("persistent id: unsupported storage type {class}")]
    StorageType { class: String },
    #[error("persistent id: storage key `{key}` is not a plain name")]
    StorageKey { key: String },
    #[error("persistent id: negative storage length")]
    NegativeLength,
}

/// `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
/// backward_hooks[, metadata])`: the view must lie inside the storage's declared length.
pub fn rebuild_tensor(args: &[Value], max_dims: usize) -> Result<TensorRef, TorchObjectError> {
    use TorchObjectError as E;
    let [storage, offset, size, stride, ..] = args else {
        return Err(E::Arguments { found: args.len() });
    };
    let Value::Storage(storage) = storage else {
        return Err(E::NotAStorage);
    };
    let offset = match offset {
        Value::Int(o) if *o >= 0 => *o as u64,
        _ => return Err(E::Offset),
    };
    let dims = |v: &Value, what: &'static str| -> Result<Vec<usize>, TorchObjectError> {
        let Value::Tuple(t) = v else {
            return Err(E::NotATuple { what });
        };
        if t.items.len() > max_dims {
            return Err(E::Dimensions {
                found: t.items.len(),
                limit: max_dims,
            });
        }
        t.items
            .iter()
            .map(|d| match d {
                Value::Int(n) if *n >= 0 => {
                    usize::try_from(*n).map_err(|_| E::TooLarge { what, value: *n })
                }
                _ => Err(E::NotACount { what }),
            })
            .collect()
    };
    let shape = dims(size, "size")?;
    let stride = dims(stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(E::Rank { shape, stride });
    }
    // The furthest element the view touches, computed without overflow.
    let mut numel: u64 = 1;
    let mut last: u64 = offset;
    for (&n, &s) in shape.iter().zip(&stride) {
        numel = numel.checked_mul(n as u64).ok_or_else(|| E::Overflow {
            what: "size",
            dims: shape.clone(),
        })?;
        if n > 0 {
            last = ((n as u64 - 1) as u128 * s as u128 + last as u128)
                .try_into()
                .map_err(|_| E::Overflow {
                    what: "stride",
                    dims: stride.clone(),
                })?;
        }
    }
    if numel > 0 && last >= storage.numel {
        return Err(E::OutsideStorage {
            shape,
            stride,
            offset,
            last,
            storage: storage.key.clone(),
            numel: storage.numel,
        });
    }
    Ok(TensorRef {
        storage: storage.clone(),
        offset,
        shape,
        stride,
    })
}

/// PyTorch's `persistent_load`: `('storage', torch.XStorage, key, location, numel)`.
pub fn persistent_load(pid: &Value) -> Result<Storage, TorchObjectError> {
    use TorchObjectError as E;
    let Value::Tuple(t) = pid else {
        return Err(E::IdNotATuple);
    };
    let [Value::Str(kind), Value::Global(class), Value::Str(key), _location, Value::Int(numel)] =
        t.items.as_slice()
    else {
        return Err(E::IdShape);
    };
    if &**kind != "storage" {
        return Err(E::IdKind {
            kind: kind.to_string(),
        });
    }
    let dtype = (class.module == "torch")
        .then(|| StorageType::from_class(&class.name))
        .flatten()
        .ok_or_else(|| E::StorageType {
            class: format!("{}.{}", class.module, class.name),
        })?;
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(E::StorageKey {
            key: key.to_string(),
        });
    }
    let numel = u64::try_from(*numel).map_err(|_| E::NegativeLength)?;
    Ok(Storage {
        key: key.to_string(),
        dtype,
        numel,
    })
}
