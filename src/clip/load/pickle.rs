//! A bounded reader for the pickles inside PyTorch archives (`data.pkl`), that executes nothing.
//!
//! PyTorch writes protocol-2 pickles (`torch.save` and `torch.jit.save` alike). Loading one with
//! Python's `pickle` runs whatever callables it names; this reader instead runs a safe subset of
//! the pickle virtual machine in which `GLOBAL`, `REDUCE`, `NEWOBJ` and `BUILD` only build inert
//! values. The two calls PyTorch's own loader gives meaning to are interpreted here:
//! `persistent_load` of a `('storage', torch.XStorage, key, location, numel)` id becomes a
//! [`Storage`], and `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` becomes a
//! [`TensorRef`] checked against its storage's declared length. `collections.OrderedDict()` is a
//! dict; every other call is kept as an [`Object`] naming its class.
//!
//! A hostile or damaged file gets an error naming the byte offset and the opcode, never a panic
//! or a large allocation: lengths are checked against the bytes that remain before anything is
//! allocated, and the stack, the memo, the number of objects and the nesting depth are bounded.
//! Containers are shared by reference (as in Python), so a pickle cannot multiply its size by
//! fetching the same memo entry again and again.

use std::collections::HashMap;
use std::rc::Rc;

use super::torch_pickle::{persistent_load, rebuild_tensor};
pub use super::torch_pickle::{Storage, StorageType, TensorRef};

/// Bounds on what one pickle may build. Real CLIP checkpoints stay far below them: a traced CLIP
/// of ViT-B/32's shape pickles 305 tensors in 11,651 opcodes, MARKs nested 9 deep.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_stack: usize,
    pub max_memo: usize,
    /// Lists, dicts and objects, together.
    pub max_objects: usize,
    /// Items ever put in tuples, lists and dicts, together: with the stack bound, this bounds
    /// the memory a pickle can make us hold, however it reuses values.
    pub max_items: usize,
    /// Containers within containers (MARK frames, tuples, and the walk of a module tree).
    pub max_depth: usize,
    pub max_string: usize,
    /// Dimensions of one tensor.
    pub max_dims: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stack: 100_000,
            max_memo: 1 << 20,
            max_objects: 1 << 20,
            max_items: 1 << 22,
            max_depth: 64,
            max_string: 1 << 20,
            max_dims: 16,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("byte {offset}: the pickle ends inside opcode {opcode:#04x}")]
    Truncated { offset: usize, opcode: u8 },
    #[error(
        "byte {offset}: opcode {opcode:#04x} is not one PyTorch writes (not read, for safety)"
    )]
    UnsupportedOpcode { offset: usize, opcode: u8 },
    #[error("byte {offset}: opcode {opcode:#04x} needs more values than the stack holds")]
    StackUnderflow { offset: usize, opcode: u8 },
    #[error("byte {offset}: more than {limit} {what}")]
    Limit {
        offset: usize,
        what: &'static str,
        limit: usize,
    },
    #[error("byte {offset}: memo entry {index} was never stored")]
    MissingMemo { offset: usize, index: u64 },
    #[error("byte {offset}: {msg}")]
    Malformed { offset: usize, msg: String },
    #[error("byte {offset}: {source}")]
    Torch {
        offset: usize,
        #[source]
        source: Box<super::torch_pickle::TorchObjectError>,
    },
    #[error("the pickle has no STOP opcode")]
    NoStop,
}

/// A value on the pickle stack. Containers that pickle mutates (lists, dicts, objects) live in
/// [`Pickle::objects`] and are referred to by index, as Python refers to them by identity.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Tuple>),
    Global(Rc<Global>),
    Storage(Rc<Storage>),
    Tensor(Rc<TensorRef>),
    /// Index into [`Pickle::objects`].
    Ref(usize),
}

#[derive(Debug)]
pub struct Tuple {
    pub items: Vec<Value>,
    /// 1 + the deepest tuple inside; bounded so that dropping a tuple cannot overflow the stack.
    depth: usize,
}

/// A `module.name` the pickle refers to; never imported, never called.
#[derive(Debug, PartialEq, Eq)]
pub struct Global {
    pub module: String,
    pub name: String,
}

/// A list, dict or object built by the pickle.
#[derive(Debug)]
pub enum Object {
    List(Vec<Value>),
    /// Insertion-ordered, as `dict` and `OrderedDict` are.
    Dict(Vec<(Value, Value)>),
    /// An instance of a class or the result of a call: kept, never run. `state` is what `BUILD`
    /// gave it (a TorchScript module's attribute dict).
    Instance {
        class: Rc<Global>,
        args: Value,
        state: Option<Value>,
    },
}

/// A parsed pickle: the value it returned and the objects it refers to.
#[derive(Debug)]
pub struct Pickle {
    pub root: Value,
    pub objects: Vec<Object>,
}

impl Pickle {
    pub fn object(&self, value: &Value) -> Option<&Object> {
        match value {
            Value::Ref(i) => self.objects.get(*i),
            _ => None,
        }
    }
}

mod op {
    pub const PROTO: u8 = 0x80;
    pub const FRAME: u8 = 0x95;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINFLOAT: u8 = b'G';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE: u8 = b'X';
    pub const BINUNICODE8: u8 = 0x8d;
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const BINBYTES: u8 = b'B';
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE: u8 = b't';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const EMPTY_LIST: u8 = b']';
    pub const LIST: u8 = b'l';
    pub const APPEND: u8 = b'a';
    pub const APPENDS: u8 = b'e';
    pub const EMPTY_DICT: u8 = b'}';
    pub const DICT: u8 = b'd';
    pub const SETITEM: u8 = b's';
    pub const SETITEMS: u8 = b'u';
    pub const GLOBAL: u8 = b'c';
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const REDUCE: u8 = b'R';
    pub const NEWOBJ: u8 = 0x81;
    pub const BUILD: u8 = b'b';
    pub const BINPERSID: u8 = b'Q';
    pub const BINGET: u8 = b'h';
    pub const LONG_BINGET: u8 = b'j';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const MEMOIZE: u8 = 0x94;
}

/// Parses a pickle, resolving `persistent_load` ids as PyTorch's loader does.
pub fn parse(data: &[u8], limits: &Limits) -> Result<Pickle, PickleError> {
    Machine {
        data,
        pos: 0,
        start: 0,
        opcode: 0,
        limits,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
        items: 0,
    }
    .run()
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset and value of the opcode being run, for errors.
    start: usize,
    opcode: u8,
    limits: &'a Limits,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    objects: Vec<Object>,
    items: usize,
}

impl<'a> Machine<'a> {
    fn run(mut self) -> Result<Pickle, PickleError> {
        while self.pos < self.data.len() {
            self.start = self.pos;
            self.opcode = self.data[self.pos];
            self.pos += 1;
            if self.opcode == op::STOP {
                let root = self.pop()?;
                return Ok(Pickle {
                    root,
                    objects: self.objects,
                });
            }
            self.step()?;
            if self.stack.len() > self.limits.max_stack {
                return Err(self.limit("values on the stack", self.limits.max_stack));
            }
        }
        Err(PickleError::NoStop)
    }

    fn step(&mut self) -> Result<(), PickleError> {
        // The opcodes PyTorch writes, by what they make: stack marks and scalars, containers,
        // and objects with the memo; any other is refused unread.
        match self.opcode {
            op::PROTO
            | op::FRAME
            | op::MARK
            | op::POP
            | op::POP_MARK
            | op::DUP
            | op::NONE
            | op::NEWTRUE
            | op::NEWFALSE
            | op::BININT
            | op::BININT1
            | op::BININT2
            | op::LONG1
            | op::LONG4
            | op::BINFLOAT
            | op::SHORT_BINUNICODE
            | op::BINUNICODE
            | op::BINUNICODE8
            | op::SHORT_BINBYTES
            | op::BINBYTES
            | op::BINBYTES8 => self.stack_op(),
            op::EMPTY_TUPLE
            | op::TUPLE
            | op::TUPLE1
            | op::TUPLE2
            | op::TUPLE3
            | op::EMPTY_LIST
            | op::LIST
            | op::APPEND
            | op::APPENDS
            | op::EMPTY_DICT
            | op::DICT
            | op::SETITEM
            | op::SETITEMS => self.container_op(),
            op::GLOBAL
            | op::STACK_GLOBAL
            | op::REDUCE
            | op::NEWOBJ
            | op::BUILD
            | op::BINPERSID
            | op::BINGET
            | op::LONG_BINGET
            | op::BINPUT
            | op::LONG_BINPUT
            | op::MEMOIZE => self.object_op(),
            _ => Err(self.unsupported()),
        }
    }

    fn unsupported(&self) -> PickleError {
        PickleError::UnsupportedOpcode {
            offset: self.start,
            opcode: self.opcode,
        }
    }

    /// Framing, marks, the stack and scalars (numbers, strings, bytes).
    fn stack_op(&mut self) -> Result<(), PickleError> {
        match self.opcode {
            op::PROTO => {
                let version = self.take(1)?[0];
                if version > 5 {
                    return Err(self.malformed(format!("unknown pickle protocol {version}")));
                }
            }
            op::FRAME => {
                self.take(8)?;
            }
            op::MARK => {
                if self.marks.len() >= self.limits.max_depth {
                    return Err(self.limit("nested MARKs", self.limits.max_depth));
                }
                self.marks.push(self.stack.len());
            }
            op::POP => {
                self.pop()?;
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let top = self.stack.last().cloned().ok_or_else(|| self.underflow())?;
                self.stack.push(top);
            }
            op::NONE => self.stack.push(Value::None),
            op::NEWTRUE => self.stack.push(Value::Bool(true)),
            op::NEWFALSE => self.stack.push(Value::Bool(false)),
            op::BININT => {
                let b = self.take(4)?;
                let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.stack.push(Value::Int(v.into()));
            }
            op::BININT1 => {
                let v = self.take(1)?[0];
                self.stack.push(Value::Int(v.into()));
            }
            op::BININT2 => {
                let b = self.take(2)?;
                self.stack
                    .push(Value::Int(u16::from_le_bytes([b[0], b[1]]).into()));
            }
            op::LONG1 | op::LONG4 => {
                let n = if self.opcode == op::LONG1 {
                    self.take(1)?[0] as usize
                } else {
                    self.length(4)?
                };
                let bytes = self.take(n)?;
                let v = long(bytes).ok_or_else(|| {
                    self.malformed(format!("an integer of {n} bytes does not fit 64 bits"))
                })?;
                self.stack.push(Value::Int(v));
            }
            op::BINFLOAT => {
                let b = self.take(8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                // Python writes floats big-endian.
                self.stack.push(Value::Float(f64::from_be_bytes(a)));
            }
            op::SHORT_BINUNICODE | op::BINUNICODE | op::BINUNICODE8 => {
                let n = match self.opcode {
                    op::SHORT_BINUNICODE => self.take(1)?[0] as usize,
                    op::BINUNICODE => self.length(4)?,
                    _ => self.length(8)?,
                };
                let s = self.string(n)?;
                self.stack.push(Value::Str(s.into()));
            }
            op::SHORT_BINBYTES | op::BINBYTES | op::BINBYTES8 => {
                let n = match self.opcode {
                    op::SHORT_BINBYTES => self.take(1)?[0] as usize,
                    op::BINBYTES => self.length(4)?,
                    _ => self.length(8)?,
                };
                self.check_string(n)?;
                let b = self.take(n)?;
                self.stack.push(Value::Bytes(b.into()));
            }
            _ => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// Tuples, lists and dicts.
    fn container_op(&mut self) -> Result<(), PickleError> {
        match self.opcode {
            op::EMPTY_TUPLE => {
                let t = self.tuple(Vec::new())?;
                self.stack.push(t);
            }
            op::TUPLE => {
                let items = self.pop_mark()?;
                let t = self.tuple(items)?;
                self.stack.push(t);
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = (self.opcode - op::TUPLE1 + 1) as usize;
                // As pickle's own stack does, items under the last MARK are out of reach.
                let floor = self.marks.last().copied().unwrap_or(0);
                let at = self
                    .stack
                    .len()
                    .checked_sub(n)
                    .filter(|&at| at >= floor)
                    .ok_or_else(|| self.underflow())?;
                let items = self.stack.split_off(at);
                let t = self.tuple(items)?;
                self.stack.push(t);
            }
            op::EMPTY_LIST => self.push_object(Object::List(Vec::new()))?,
            op::LIST => {
                let items = self.pop_mark()?;
                self.count_items(items.len())?;
                self.push_object(Object::List(items))?;
            }
            op::APPEND | op::APPENDS => {
                let items = if self.opcode == op::APPEND {
                    vec![self.pop()?]
                } else {
                    self.pop_mark()?
                };
                self.count_items(items.len())?;
                let target = self.top_object()?;
                match &mut self.objects[target] {
                    Object::List(list) => list.extend(items),
                    _ => {
                        return Err(self.malformed("APPEND to something that is not a list".into()))
                    }
                }
            }
            op::EMPTY_DICT => self.push_object(Object::Dict(Vec::new()))?,
            op::DICT => {
                let items = self.pop_mark()?;
                let pairs = self.pairs(items)?;
                self.push_object(Object::Dict(pairs))?;
            }
            op::SETITEM | op::SETITEMS => {
                let items = if self.opcode == op::SETITEM {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    vec![k, v]
                } else {
                    self.pop_mark()?
                };
                let pairs = self.pairs(items)?;
                let target = self.top_object()?;
                match &mut self.objects[target] {
                    Object::Dict(dict) => dict.extend(pairs),
                    _ => {
                        return Err(self.malformed("SETITEM on something that is not a dict".into()))
                    }
                }
            }
            _ => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// Globals, calls, persistent ids and the memo.
    fn object_op(&mut self) -> Result<(), PickleError> {
        match self.opcode {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                self.stack
                    .push(Value::Global(Rc::new(Global { module, name })));
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => {
                        self.stack.push(Value::Global(Rc::new(Global {
                            module: m.to_string(),
                            name: n.to_string(),
                        })))
                    }
                    _ => return Err(self.malformed("STACK_GLOBAL needs two strings".into())),
                }
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.reduce(callable, args)?;
                self.stack.push(v);
            }
            op::NEWOBJ => {
                let args = self.pop()?;
                let class = match self.pop()? {
                    Value::Global(g) => g,
                    _ => {
                        return Err(self.malformed("NEWOBJ of something that is not a class".into()))
                    }
                };
                self.push_object(Object::Instance {
                    class,
                    args,
                    state: None,
                })?;
            }
            op::BUILD => {
                let state = self.pop()?;
                let target = self.stack.last().ok_or_else(|| self.underflow())?;
                if let Value::Ref(i) = *target {
                    match &mut self.objects[i] {
                        Object::Instance { state: s, .. } => *s = Some(state),
                        // `OrderedDict` instance attributes (a state dict's `_metadata`): no
                        // tensors, nothing to keep.
                        Object::Dict(_) => {}
                        Object::List(_) => {
                            return Err(self.malformed("BUILD on a list".into()));
                        }
                    }
                }
                // BUILD on an inert value (a tensor's empty state) changes nothing we read.
            }
            op::BINPERSID => {
                let pid = self.pop()?;
                let storage = persistent_load(&pid).map_err(|e| self.torch(e))?;
                self.stack.push(Value::Storage(Rc::new(storage)));
            }
            op::BINGET | op::LONG_BINGET => {
                let index = if self.opcode == op::BINGET {
                    self.take(1)?[0] as u64
                } else {
                    self.u32()? as u64
                };
                let v = self
                    .memo
                    .get(&index)
                    .cloned()
                    .ok_or(PickleError::MissingMemo {
                        offset: self.start,
                        index,
                    })?;
                self.stack.push(v);
            }
            op::BINPUT | op::LONG_BINPUT | op::MEMOIZE => {
                let index = match self.opcode {
                    op::BINPUT => self.take(1)?[0] as u64,
                    op::LONG_BINPUT => self.u32()? as u64,
                    _ => self.memo.len() as u64,
                };
                let top = self.stack.last().cloned().ok_or_else(|| self.underflow())?;
                if !self.memo.contains_key(&index) && self.memo.len() >= self.limits.max_memo {
                    return Err(self.limit("memo entries", self.limits.max_memo));
                }
                self.memo.insert(index, top);
            }
            _ => return Err(self.unsupported()),
        }
        Ok(())
    }

    /// `callable(*args)` for the calls PyTorch's loader gives meaning to; anything else is kept
    /// as an inert instance.
    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value, PickleError> {
        let Value::Global(g) = callable else {
            return Err(self.malformed("REDUCE of something that is not a global".into()));
        };
        let Value::Tuple(t) = &args else {
            return Err(self.malformed(format!(
                "REDUCE of {}.{} without an argument tuple",
                g.module, g.name
            )));
        };
        match (g.module.as_str(), g.name.as_str()) {
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => {
                let tensor =
                    rebuild_tensor(&t.items, self.limits.max_dims).map_err(|e| self.torch(e))?;
                Ok(Value::Tensor(Rc::new(tensor)))
            }
            // An `nn.Parameter` saved whole: its tensor is the first argument.
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => match t.items.first() {
                Some(v @ Value::Tensor(_)) => Ok(v.clone()),
                _ => Err(self.malformed("_rebuild_parameter without a tensor".into())),
            },
            ("collections", "OrderedDict") => {
                if !t.items.is_empty() {
                    return Err(self.malformed("OrderedDict(...) with arguments".into()));
                }
                self.push_object(Object::Dict(Vec::new()))?;
                self.pop()
            }
            _ => {
                self.push_object(Object::Instance {
                    class: g,
                    args,
                    state: None,
                })?;
                self.pop()
            }
        }
    }

    fn tuple(&mut self, items: Vec<Value>) -> Result<Value, PickleError> {
        self.count_items(items.len())?;
        let depth = 1 + items
            .iter()
            .map(|v| match v {
                Value::Tuple(t) => t.depth,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        if depth > self.limits.max_depth {
            return Err(self.limit("nested tuples", self.limits.max_depth));
        }
        Ok(Value::Tuple(Rc::new(Tuple { items, depth })))
    }

    fn pairs(&mut self, items: Vec<Value>) -> Result<Vec<(Value, Value)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("a dict update with an odd number of values".into()));
        }
        self.count_items(items.len() / 2)?;
        let mut it = items.into_iter();
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(pairs)
    }

    fn count_items(&mut self, n: usize) -> Result<(), PickleError> {
        self.items += n;
        if self.items > self.limits.max_items {
            return Err(self.limit("items in tuples, lists and dicts", self.limits.max_items));
        }
        Ok(())
    }

    fn push_object(&mut self, object: Object) -> Result<(), PickleError> {
        if self.objects.len() >= self.limits.max_objects {
            return Err(self.limit("lists, dicts and objects", self.limits.max_objects));
        }
        self.objects.push(object);
        self.stack.push(Value::Ref(self.objects.len() - 1));
        Ok(())
    }

    fn top_object(&self) -> Result<usize, PickleError> {
        match self.stack.last() {
            Some(Value::Ref(i)) => Ok(*i),
            Some(_) => {
                Err(self.malformed("adding items to something that is not a container".into()))
            }
            None => Err(self.underflow()),
        }
    }

    fn pop(&mut self) -> Result<Value, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.underflow());
        }
        self.stack.pop().ok_or_else(|| self.underflow())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PickleError> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed("no MARK to pop to".into()))?;
        if mark > self.stack.len() {
            return Err(self.underflow());
        }
        Ok(self.stack.split_off(mark))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(PickleError::Truncated {
                offset: self.start,
                opcode: self.opcode,
            })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A little-endian length of `width` bytes, checked against the bytes left.
    fn length(&mut self, width: usize) -> Result<usize, PickleError> {
        let b = self.take(width)?;
        let mut a = [0u8; 8];
        a[..width].copy_from_slice(b);
        let n = u64::from_le_bytes(a);
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.data.len() - self.pos)
            .ok_or(PickleError::Truncated {
                offset: self.start,
                opcode: self.opcode,
            })
    }

    fn check_string(&self, n: usize) -> Result<(), PickleError> {
        if n > self.limits.max_string {
            return Err(self.limit("bytes in one string", self.limits.max_string));
        }
        Ok(())
    }

    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        self.check_string(n)?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.malformed("a string is not UTF-8".into()))
    }

    /// A newline-terminated ASCII line (GLOBAL's operands).
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let limit = rest.len().min(self.limits.max_string);
        let n = rest[..limit]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated {
                offset: self.start,
                opcode: self.opcode,
            })?;
        let line = self.take(n + 1)?;
        let s = std::str::from_utf8(&line[..n])
            .map_err(|_| self.malformed("a GLOBAL name is not UTF-8".into()))?;
        Ok(s.to_string())
    }

    fn underflow(&self) -> PickleError {
        PickleError::StackUnderflow {
            offset: self.start,
            opcode: self.opcode,
        }
    }

    fn limit(&self, what: &'static str, limit: usize) -> PickleError {
        PickleError::Limit {
            offset: self.start,
            what,
            limit,
        }
    }

    fn malformed(&self, msg: String) -> PickleError {
        PickleError::Malformed {
            offset: self.start,
            msg,
        }
    }

    fn torch(&self, source: super::torch_pickle::TorchObjectError) -> PickleError {
        PickleError::Torch {
            offset: self.start,
            source: Box::new(source),
        }
    }
}

/// A little-endian two's-complement integer of up to 8 bytes (LONG1 / LONG4).
fn long(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() {
        return Some(0);
    }
    if bytes.len() > 8 {
        return None;
    }
    let fill = if bytes[bytes.len() - 1] & 0x80 != 0 {
        0xff
    } else {
        0
    };
    let mut a = [fill; 8];
    a[..bytes.len()].copy_from_slice(bytes);
    Some(i64::from_le_bytes(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Pickle, PickleError> {
        parse(bytes, &Limits::default())
    }

    #[test]
    fn reads_scalars_as_python_writes_them() {
        // LONG1 of -2 (two's complement, little-endian), BINFLOAT 1.5 (big-endian), a tuple.
        let p = run(b"\x80\x02\x8a\x01\xfeG\x3f\xf8\x00\x00\x00\x00\x00\x00\x86.").unwrap();
        let Value::Tuple(t) = p.root else {
            panic!("{:?}", p.root)
        };
        assert!(matches!(t.items[..], [Value::Int(-2), Value::Float(f)] if f == 1.5));
    }

    /// BUILD after BINPUT changes the object the memo refers to, as in Python: TorchScript
    /// pickles memoize a module before giving it its state.
    #[test]
    fn memoized_objects_are_shared_not_copied() {
        let p = run(b"\x80\x02c__torch__\nM\n)\x81q\x00}X\x01\x00\x00\x00aK\x01sb0h\x00.").unwrap();
        match p.object(&p.root) {
            Some(Object::Instance {
                class,
                state: Some(state),
                ..
            }) => {
                assert_eq!(class.name, "M");
                assert!(matches!(p.object(state), Some(Object::Dict(d)) if d.len() == 1));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn damaged_pickles_are_refused_with_the_offset() {
        let cases: &[(&[u8], &str)] = &[
            (b"\x80\x02R.", "byte 2: opcode 0x52 needs more values"),
            (b"\x80\x02h\x05.", "byte 2: memo entry 5 was never stored"),
            (b"\x80\x02K", "byte 2: the pickle ends inside opcode 0x4b"),
            (
                b"\x80\x02}K\x02a.",
                "APPEND to something that is not a list",
            ),
            (b"\x80\x02K\x01(R.", "byte 5: opcode 0x52 needs more values"),
            (b"\x80\x02", "no STOP"),
            (
                b"\x80\x02\x8a\x09\x01\x01\x01\x01\x01\x01\x01\x01\x01.",
                "does not fit 64 bits",
            ),
            (b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", ""),
        ];
        for (bytes, needle) in cases {
            match run(bytes) {
                Err(e) => assert!(e.to_string().contains(needle), "{e} lacks {needle}"),
                // `os.system('ls')` is only a name and a tuple: an inert instance, never run.
                Ok(p) => {
                    assert!(needle.is_empty());
                    assert!(matches!(
                        p.object(&p.root),
                        Some(Object::Instance { class, .. }) if class.module == "os"
                    ));
                }
            }
        }
    }

    #[test]
    fn limits_hold() {
        let small = Limits {
            max_memo: 2,
            max_objects: 2,
            max_stack: 3,
            ..Limits::default()
        };
        let e = parse(b"\x80\x02}}}.", &small).unwrap_err();
        assert!(
            e.to_string()
                .contains("more than 2 lists, dicts and objects"),
            "{e}"
        );
        let e = parse(b"\x80\x02K\x01q\x00q\x01q\x02.", &small).unwrap_err();
        assert!(e.to_string().contains("more than 2 memo entries"), "{e}");
        let e = parse(b"\x80\x02K\x01K\x01K\x01K\x01.", &small).unwrap_err();
        assert!(
            e.to_string().contains("more than 3 values on the stack"),
            "{e}"
        );
        // Fetching one dict a hundred thousand times adds references, not copies.
        let mut many = b"\x80\x02}q\x00(".to_vec();
        many.extend(std::iter::repeat_n(*b"h\x00", 50_000).flatten());
        many.extend(b"l.");
        let p = run(&many).unwrap();
        assert_eq!(p.objects.len(), 2);
    }
}
