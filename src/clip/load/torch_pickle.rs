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

/// `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
/// backward_hooks[, metadata])`: the view must lie inside the storage's declared length.
pub fn rebuild_tensor(args: &[Value], max_dims: usize) -> Result<TensorRef, String> {
    let bad = |msg: String| format!("tensor: {msg}");
    let [storage, offset, size, stride, ..] = args else {
        return Err(bad(format!(
            "{} arguments, expected at least 4",
            args.len()
        )));
    };
    let Value::Storage(storage) = storage else {
        return Err(bad("the first argument is not a storage".into()));
    };
    let offset = match offset {
        Value::Int(o) if *o >= 0 => *o as u64,
        _ => {
            return Err(bad(
                "the storage offset is not a non-negative integer".into()
            ))
        }
    };
    let dims = |v: &Value, what: &str| -> Result<Vec<usize>, String> {
        let Value::Tuple(t) = v else {
            return Err(bad(format!("the {what} is not a tuple")));
        };
        if t.items.len() > max_dims {
            return Err(bad(format!(
                "{} dimensions (at most {})",
                t.items.len(),
                max_dims
            )));
        }
        t.items
            .iter()
            .map(|d| match d {
                Value::Int(n) if *n >= 0 => {
                    usize::try_from(*n).map_err(|_| bad(format!("{what} {n} is too large")))
                }
                _ => Err(bad(format!(
                    "the {what} holds something other than a non-negative integer"
                ))),
            })
            .collect()
    };
    let shape = dims(size, "size")?;
    let stride = dims(stride, "stride")?;
    if shape.len() != stride.len() {
        return Err(bad(format!(
            "size {shape:?} and stride {stride:?} differ in length"
        )));
    }
    // The furthest element the view touches, computed without overflow.
    let mut numel: u64 = 1;
    let mut last: u64 = offset;
    for (&n, &s) in shape.iter().zip(&stride) {
        numel = numel
            .checked_mul(n as u64)
            .ok_or_else(|| bad(format!("size {shape:?} overflows")))?;
        if n > 0 {
            last = ((n as u64 - 1) as u128 * s as u128 + last as u128)
                .try_into()
                .map_err(|_| bad(format!("stride {stride:?} overflows")))?;
        }
    }
    if numel > 0 && last >= storage.numel {
        return Err(bad(format!(
            "a view of size {shape:?}, stride {stride:?} at offset {offset} reaches element {last} \
             of storage `{}`, which declares {} elements",
            storage.key, storage.numel
        )));
    }
    Ok(TensorRef {
        storage: storage.clone(),
        offset,
        shape,
        stride,
    })
}

/// PyTorch's `persistent_load`: `('storage', torch.XStorage, key, location, numel)`.
pub fn persistent_load(pid: &Value) -> Result<Storage, String> {
    let bad = |msg: &str| format!("persistent id: {msg}");
    let Value::Tuple(t) = pid else {
        return Err(bad("not a tuple"));
    };
    let [Value::Str(kind), Value::Global(class), Value::Str(key), _location, Value::Int(numel)] =
        t.items.as_slice()
    else {
        return Err(bad(
            "expected ('storage', torch.<Type>Storage, key, location, numel)",
        ));
    };
    if &**kind != "storage" {
        return Err(bad(&format!("unknown kind `{kind}`, expected `storage`")));
    }
    let dtype = (class.module == "torch")
        .then(|| StorageType::from_class(&class.name))
        .flatten()
        .ok_or_else(|| {
            bad(&format!(
                "unsupported storage type {}.{}",
                class.module, class.name
            ))
        })?;
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad(&format!("storage key `{key}` is not a plain name")));
    }
    let numel = u64::try_from(*numel).map_err(|_| bad("negative storage length"))?;
    Ok(Storage {
        key: key.to_string(),
        dtype,
        numel,
    })
}
