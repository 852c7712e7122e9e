//! The parts of a SentencePiece `spiece.model` (a `ModelProto` protocol buffer) a Unigram
//! tokenizer needs, read by a small protobuf decoder: the pieces with their scores and types,
//! the trainer's model type, and the normaliser's precompiled character map and flags.
//!
//! Field numbers are those of sentencepiece's `sentencepiece_model.proto`: `ModelProto.pieces = 1`,
//! `trainer_spec = 2`, `normalizer_spec = 3`; `SentencePiece.piece = 1`, `score = 2`, `type = 3`;
//! `TrainerSpec.model_type = 3`, `byte_fallback = 35`; `NormalizerSpec.name = 1`,
//! `precompiled_charsmap = 2`, `add_dummy_prefix = 3`, `remove_extra_whitespaces = 4`,
//! `escape_whitespaces = 5`. Unknown fields are skipped, as protobuf readers do.

/// `SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Option<Self> {
        Some(match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }

    /// Whether the segmentation may produce this piece from text.
    pub fn matches_text(self) -> bool {
        matches!(
            self,
            PieceType::Normal | PieceType::UserDefined | PieceType::Byte
        )
    }
}

#[derive(Debug, Clone)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// `NormalizerSpec`, with the proto's defaults for absent fields.
#[derive(Debug, Clone)]
pub struct NormalizerSpec {
    pub name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelProto {
    pub pieces: Vec<Piece>,
    /// `TrainerSpec.model_type`: 1 Unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    pub byte_fallback: bool,
    pub normalizer: NormalizerSpec,
}

/// A malformed buffer: what was being read and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    pub offset: usize,
    pub what: &'static str,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the whole file, for error messages.
    base: usize,
}

enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8], usize),
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    fn err(&self, what: &'static str) -> ProtoError {
        ProtoError {
            offset: self.base + self.pos,
            what,
        }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err("a varint cut short"));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("a varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err("a field longer than the bytes left"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The next `(field number, value)`, or `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, ProtoError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                let start = self.base + self.pos;
                Value::Bytes(self.take(len)?, start)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            _ => return Err(self.err("an unsupported wire type")),
        };
        Ok(Some((key >> 3, value)))
    }
}

fn utf8(bytes: &[u8], at: usize, what: &'static str) -> Result<String, ProtoError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError { offset: at, what })
}

fn read_piece(buf: &[u8], base: usize) -> Result<Piece, ProtoError> {
    let mut r = Reader::new(buf, base);
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(b, at)) => piece.piece = utf8(b, at, "a piece that is not UTF-8")?,
            (2, Value::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Value::Varint(v)) => {
                piece.kind =
                    PieceType::from_proto(v).ok_or_else(|| r.err("an unknown piece type"))?
            }
            _ => {}
        }
    }
    Ok(piece)
}

fn read_normalizer(buf: &[u8], base: usize) -> Result<NormalizerSpec, ProtoError> {
    let mut r = Reader::new(buf, base);
    let mut spec = NormalizerSpec::default();
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(b, at)) => spec.name = utf8(b, at, "a normalizer name not UTF-8")?,
            (2, Value::Bytes(b, _)) => spec.precompiled_charsmap = b.to_vec(),
            (3, Value::Varint(v)) => spec.add_dummy_prefix = v != 0,
            (4, Value::Varint(v)) => spec.remove_extra_whitespaces = v != 0,
            (5, Value::Varint(v)) => spec.escape_whitespaces = v != 0,
            _ => {}
        }
    }
    Ok(spec)
}

impl ModelProto {
    /// Decodes a serialized `ModelProto`.
    pub fn parse(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut r = Reader::new(buf, 0);
        let mut model = ModelProto {
            pieces: Vec::new(),
            model_type: 1,
            byte_fallback: false,
            normalizer: NormalizerSpec::default(),
        };
        while let Some((field, value)) = r.field()? {
            match (field, value) {
                (1, Value::Bytes(b, at)) => model.pieces.push(read_piece(b, at)?),
                (2, Value::Bytes(b, at)) => {
                    let mut t = Reader::new(b, at);
                    while let Some((f, v)) = t.field()? {
                        match (f, v) {
                            (3, Value::Varint(v)) => model.model_type = v,
                            (35, Value::Varint(v)) => model.byte_fallback = v != 0,
                            _ => {}
                        }
                    }
                }
                (3, Value::Bytes(b, at)) => model.normalizer = read_normalizer(b, at)?,
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err(r.err("no pieces"));
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes_field(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    #[test]
    fn reads_pieces_and_normalizer_flags() {
        let mut piece = Vec::new();
        bytes_field(1, "▁cat".as_bytes(), &mut piece);
        piece.push(2 << 3 | 5);
        piece.extend_from_slice(&(-3.5f32).to_le_bytes());
        let mut control = Vec::new();
        bytes_field(1, b"</s>", &mut control);
        control.extend_from_slice(&[3 << 3, 3]);
        let mut norm = Vec::new();
        bytes_field(2, &[1, 2, 3], &mut norm);
        norm.extend_from_slice(&[3 << 3, 0]);
        let mut model = Vec::new();
        bytes_field(1, &piece, &mut model);
        bytes_field(1, &control, &mut model);
        bytes_field(3, &norm, &mut model);
        // An unknown fixed64 field is skipped.
        model.push(9 << 3 | 1);
        model.extend_from_slice(&[0; 8]);
        let m = ModelProto::parse(&model).unwrap();
        assert_eq!(m.pieces.len(), 2);
        assert_eq!(
            (m.pieces[0].piece.as_str(), m.pieces[0].score),
            ("▁cat", -3.5)
        );
        assert_eq!(m.pieces[1].kind, PieceType::Control);
        assert_eq!(m.normalizer.precompiled_charsmap, [1, 2, 3]);
        assert!(!m.normalizer.add_dummy_prefix && m.normalizer.remove_extra_whitespaces);
        assert_eq!(m.model_type, 1);
    }

    #[test]
    fn truncated_buffers_are_errors() {
        let mut model = Vec::new();
        bytes_field(1, b"\x0a\x05abc", &mut model);
        assert!(ModelProto::parse(&model).is_err());
        assert!(ModelProto::parse(&[0x0a, 0x80]).is_err());
        assert!(ModelProto::parse(&[]).is_err());
    }
}
