//! Tokenizer parity with open_clip and transformers on the committed corpus
//! (`tests/fixtures/tokenizer/corpus.json`, written by `scripts/fixtures/tokenizer.py`), plus
//! truncation, padding, the Hugging Face file layouts and error messages.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use clip_adapter::tokenizer::{Cleaning, Tokenizer, TokenizerError, CONTEXT_LENGTH};
use serde::Deserialize;

const SOT: u32 = 49406;
const EOT: u32 = 49407;

#[derive(Deserialize)]
struct Row {
    text: String,
    open_clip: Vec<u32>,
    transformers: Vec<u32>,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The corpus; a missing or unreadable fixture fails the test rather than skipping it.
fn corpus() -> Vec<Row> {
    let path = repo().join("tests/fixtures/tokenizer/corpus.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate it with `scripts/fixtures/regenerate.sh tokenizer`",
            path.display()
        )
    });
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn openai() -> Tokenizer {
    Tokenizer::openai().expect("embedded vocabulary")
}

/// Compares every corpus row and reports the first mismatch in full.
fn check_parity(
    tokenizer: &Tokenizer,
    expected: impl Fn(&Row) -> &[u32],
    pad: u32,
    reference: &str,
) {
    let rows = corpus();
    let mut mismatches = 0;
    let mut first = None;
    for row in &rows {
        let ours = tokenizer.tokenize_padded(&row.text, CONTEXT_LENGTH, pad);
        if ours != expected(row) {
            mismatches += 1;
            first.get_or_insert_with(|| {
                format!(
                    "text {:?}\n  ours: {:?}\n  {reference}: {:?}",
                    row.text,
                    ours,
                    expected(row)
                )
            });
        }
    }
    if let Some(first) = first {
        panic!(
            "{mismatches} of {} corpus strings differ from {reference}; first:\n{first}",
            rows.len()
        );
    }
}

#[test]
fn corpus_is_large_and_well_formed() {
    let rows = corpus();
    assert!(rows.len() >= 200, "only {} corpus strings", rows.len());
    for row in &rows {
        assert_eq!(row.open_clip.len(), CONTEXT_LENGTH, "{:?}", row.text);
        assert_eq!(row.transformers.len(), CONTEXT_LENGTH, "{:?}", row.text);
    }
}

#[test]
fn matches_open_clip_on_corpus() {
    check_parity(&openai(), |r| &r.open_clip, 0, "open_clip");
}

#[test]
fn matches_transformers_on_corpus() {
    let tokenizer = openai().with_cleaning(Cleaning::Transformers);
    // transformers pads with its pad token, <|endoftext|>.
    check_parity(&tokenizer, |r| &r.transformers, EOT, "transformers");
}

#[test]
fn tokenizer_is_shareable_across_threads() {
    fn shareable<T: Send + Sync + Clone>() {}
    shareable::<Tokenizer>();
}

#[test]
fn special_ids_and_vocab_size() {
    let t = openai();
    assert_eq!(
        (t.sot_id(), t.eot_id(), t.vocab_size()),
        (Some(SOT), EOT, 49408)
    );
    assert_eq!(t.cleaning(), Cleaning::OpenClip);
}

#[test]
fn truncation_keeps_the_end_token() {
    let t = openai();
    // "word" is one token: 75 fit between the start and end tokens, the 76th is cut.
    for (words, kept) in [(74, 74), (75, 75), (76, 75), (500, 75)] {
        let text = vec!["word"; words].join(" ");
        let row = t.tokenize(&text, CONTEXT_LENGTH);
        assert_eq!(row.len(), CONTEXT_LENGTH);
        assert_eq!(row[0], SOT);
        assert_eq!(row[kept + 1], EOT, "{words} words");
        assert!(
            row[1..=kept].iter().all(|&id| id == row[1]),
            "{words} words"
        );
    }
    assert_eq!(t.tokenize("a cat", 3), [SOT, 320, EOT]);
    assert_eq!(t.tokenize("a cat", 1), [EOT]);
    assert!(t.tokenize("a cat", 0).is_empty());
}

#[test]
fn padding_is_zero() {
    let t = openai();
    let row = t.tokenize("a photo of a cat.", CONTEXT_LENGTH);
    assert_eq!(row[..8], [SOT, 320, 1125, 539, 320, 2368, 269, EOT]);
    assert!(row[8..].iter().all(|&id| id == 0));
    assert_eq!(t.tokenize("", 4), [SOT, EOT, 0, 0]);
    let batch = t.tokenize_batch(&["a cat", "a dog"], 5);
    assert_eq!(batch, [[SOT, 320, 2368, EOT, 0], [SOT, 320, 1929, EOT, 0]]);
}

#[test]
fn decode_inverts_encode() {
    let t = openai();
    let ids = t.encode("A café, 2 dogs & naïve 猫!");
    assert_eq!(t.decode(&ids), "a café , 2 dogs & naïve 猫 ! ");
}

/// vocab.json + merges.txt derived from the embedded BPE file the way the Hugging Face hub's
/// CLIP repositories lay them out (independently of the crate's own loader).
fn hf_vocab_and_merges() -> (HashMap<String, u32>, Vec<(String, String)>) {
    let gz = std::fs::read(repo().join("assets/bpe_simple_vocab_16e6.txt.gz")).expect("asset");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_string(&mut text)
        .expect("gzip");
    let merges: Vec<(String, String)> = text
        .split('\n')
        .skip(1)
        .take(49152 - 256 - 2)
        .map(|l| {
            let (a, b) = l.split_once(' ').expect("merge line");
            (a.to_string(), b.to_string())
        })
        .collect();
    // GPT-2's byte-to-character map.
    let mut bytes: Vec<u32> = (0x21..=0x7e)
        .chain(0xa1..=0xac)
        .chain(0xae..=0xff)
        .collect();
    let mut chars = bytes.clone();
    let mut extra = 0;
    for b in 0..256 {
        if !bytes.contains(&b) {
            bytes.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    // Vocabulary order is the map's insertion order: printable bytes, then the remapped ones.
    let base: Vec<String> = chars
        .into_iter()
        .map(|c| char::from_u32(c).expect("char").to_string())
        .collect();
    let tokens = base
        .iter()
        .cloned()
        .chain(base.iter().map(|c| format!("{c}</w>")))
        .chain(merges.iter().map(|(a, b)| format!("{a}{b}")))
        .chain(["<|startoftext|>".to_string(), "<|endoftext|>".to_string()]);
    let vocab = tokens.enumerate().map(|(i, t)| (t, i as u32)).collect();
    (vocab, merges)
}

fn write_vocab_and_merges(dir: &Path) {
    let (vocab, merges) = hf_vocab_and_merges();
    std::fs::write(
        dir.join("vocab.json"),
        serde_json::to_string(&vocab).unwrap(),
    )
    .unwrap();
    let mut text = String::from("#version: 0.2\n");
    for (a, b) in &merges {
        text.push_str(&format!("{a} {b}\n"));
    }
    std::fs::write(dir.join("merges.txt"), text).unwrap();
}

fn write_tokenizer_json(dir: &Path, pairs: bool) {
    let (vocab, merges) = hf_vocab_and_merges();
    let merges: Vec<serde_json::Value> = merges
        .into_iter()
        .map(|(a, b)| {
            if pairs {
                serde_json::json!([a, b])
            } else {
                serde_json::json!(format!("{a} {b}"))
            }
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "added_tokens": [
            {"id": SOT, "content": "<|startoftext|>", "normalized": true, "special": true},
            {"id": EOT, "content": "<|endoftext|>", "normalized": false, "special": true},
        ],
        "model": {
            "type": "BPE",
            "vocab": vocab,
            "merges": merges,
            "end_of_word_suffix": "</w>",
            "continuing_subword_prefix": "",
            "unk_token": "<|endoftext|>",
        },
    });
    std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
}

fn assert_same_ids(loaded: &Tokenizer, what: &str) {
    assert_eq!(loaded.vocab_size(), 49408, "{what}");
    for cleaning in [Cleaning::OpenClip, Cleaning::Transformers] {
        let embedded = openai().with_cleaning(cleaning);
        let loaded = loaded.clone().with_cleaning(cleaning);
        for row in corpus() {
            assert_eq!(
                loaded.tokenize(&row.text, CONTEXT_LENGTH),
                embedded.tokenize(&row.text, CONTEXT_LENGTH),
                "{what}, {cleaning:?}: {:?}",
                row.text
            );
        }
    }
}

#[test]
fn hugging_face_files_give_the_embedded_ids() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Tokenizer::from_model_dir(dir.path()).unwrap().is_none());

    write_vocab_and_merges(dir.path());
    let files = Tokenizer::from_files(
        &dir.path().join("vocab.json"),
        &dir.path().join("merges.txt"),
    )
    .unwrap();
    assert_same_ids(&files, "vocab.json + merges.txt");
    let from_dir = Tokenizer::from_model_dir(dir.path())
        .unwrap()
        .expect("found");
    assert_eq!(from_dir.encode("a photo"), [320, 1125]);

    for pairs in [false, true] {
        write_tokenizer_json(dir.path(), pairs);
        let json = Tokenizer::from_tokenizer_json(&dir.path().join("tokenizer.json")).unwrap();
        assert_same_ids(&json, &format!("tokenizer.json, merges as pairs: {pairs}"));
    }
    // tokenizer.json wins over vocab.json + merges.txt.
    std::fs::write(dir.path().join("merges.txt"), "garbled").unwrap();
    assert!(Tokenizer::from_model_dir(dir.path()).unwrap().is_some());
}

fn error_text(result: Result<Tokenizer, TokenizerError>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let vocab = dir.path().join("vocab.json");
    let merges = dir.path().join("merges.txt");
    let tokenizer_json = dir.path().join("tokenizer.json");

    let msg = error_text(Tokenizer::from_files(&vocab, &merges));
    assert!(msg.contains("vocab.json"), "{msg}");

    write_vocab_and_merges(dir.path());
    std::fs::remove_file(&merges).unwrap();
    let msg = error_text(Tokenizer::from_model_dir(dir.path()).map(|t| t.expect("some")));
    assert!(msg.contains("merges.txt"), "{msg}");

    std::fs::write(&merges, "#version: 0.2\nh e\nthis line is garbled\n").unwrap();
    let msg = error_text(Tokenizer::from_files(&vocab, &merges));
    assert!(
        msg.contains("merges.txt") && msg.contains("line 3"),
        "{msg}"
    );

    std::fs::write(&merges, "#version: 0.2\nh zzzz\n").unwrap();
    let msg = error_text(Tokenizer::from_files(&vocab, &merges));
    assert!(msg.contains("merges.txt") && msg.contains("zzzz"), "{msg}");

    std::fs::write(&vocab, "{\"a\": 0,").unwrap();
    let msg = error_text(Tokenizer::from_files(&vocab, &merges));
    assert!(msg.contains("vocab.json") && msg.contains("JSON"), "{msg}");

    std::fs::write(&vocab, "{\"a\": 0, \"<|endoftext|>\": 1}").unwrap();
    let msg = error_text(Tokenizer::from_files(&vocab, &merges));
    assert!(
        msg.contains("vocab.json") && msg.contains("no token"),
        "{msg}"
    );

    std::fs::write(
        &tokenizer_json,
        r#"{"model": {"type": "WordPiece", "vocab": {}, "merges": []}}"#,
    )
    .unwrap();
    let msg = error_text(Tokenizer::from_tokenizer_json(&tokenizer_json));
    assert!(
        msg.contains("tokenizer.json") && msg.contains("model.type"),
        "{msg}"
    );

    std::fs::write(
        &tokenizer_json,
        r#"{"model": {"type": "BPE", "vocab": {}, "merges": [], "end_of_word_suffix": null}}"#,
    )
    .unwrap();
    let msg = error_text(Tokenizer::from_tokenizer_json(&tokenizer_json));
    assert!(msg.contains("end_of_word_suffix"), "{msg}");

    std::fs::write(&tokenizer_json, "[]").unwrap();
    let msg = error_text(Tokenizer::from_model_dir(dir.path()).map(|t| t.expect("some")));
    assert!(
        msg.contains("tokenizer.json") && msg.contains("JSON"),
        "{msg}"
    );
}
