//! Input that must be refused with a clear error, never a panic, a huge allocation or a silent
//! wrong answer: saved heads, split files, manifests and class folders that are malformed,
//! inconsistent, or too large for the data they describe.

use std::path::Path;

use clip_adapter::data::folder::{from_class_folders, from_manifest, SeededSplit};
use clip_adapter::data::split_file;
use clip_adapter::methods::clip_adapter::{AdapterModel, AdapterParams, Bottleneck, Ratio};
use clip_adapter::methods::head::{self, Head, HeadInfo};
use clip_adapter::methods::tip_adapter::TipHead;
use clip_adapter::methods::Matrix;
use serde_json::{json, Value};

use crate::common::{assert_fails_with, clip_adapter};

/// An error and all its causes, as the command line prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn matrix(rows: usize, cols: usize, seed: f32) -> Matrix {
    let data = (0..rows * cols)
        .map(|i| ((i as f32 + 1.0) * 0.37 + seed).sin())
        .collect();
    Matrix { rows, cols, data }
}

/// A 6-class CLIP-Adapter head on 8-wide features with a 2-wide visual bottleneck.
fn adapter_head() -> (Head, HeadInfo) {
    let (k, d, h) = (6, 8, 2);
    let head = Head::new(AdapterModel {
        params: AdapterParams {
            visual: Some(Bottleneck {
                dim: d,
                hidden: h,
                w1: matrix(d, h, 1.0).data,
                w2: matrix(h, d, 2.0).data,
                relu_out: true,
            }),
            text: None,
            alpha: Ratio::Fixed(0.2),
            beta: Ratio::Fixed(0.0),
        },
        classes: matrix(k, d, 3.0),
        logit_scale: 100.0,
    });
    let info = HeadInfo {
        model: "tiny".into(),
        classnames: (0..k).map(|c| format!("class {c}")).collect(),
        templates: vec!["a photo of a {}.".into()],
        method: "clip-adapter".into(),
        options: "{}".into(),
        model_fingerprint: None,
    };
    (head, info)
}

/// Splits safetensors bytes into the JSON header and the data, edits them, and joins them again.
fn edit(
    bytes: &[u8],
    f: impl FnOnce(&mut serde_json::Map<String, Value>, &mut Vec<u8>),
) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    f(&mut header, &mut data);
    // The edited data gets its checksum again, so that the check under test is the one that
    // refuses it (a damaged file is refused by the checksum: see `damaged_heads_are_refused`).
    if let Some(meta) = header
        .get_mut("__metadata__")
        .and_then(Value::as_object_mut)
    {
        if meta.contains_key("checksum") {
            let sum = clip_adapter::safetensors_file::checksum(&data);
            meta.insert("checksum".into(), Value::String(sum));
        }
    }
    let mut h = Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn load_err(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("head.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let err = head::load(&path).expect_err("the head must be refused");
    let msg = chain(&err);
    assert!(msg.contains("head.safetensors"), "{msg}");
    msg
}

fn meta(h: &mut serde_json::Map<String, Value>, key: &str, value: &str) {
    h["__metadata__"][key] = value.into();
}

#[test]
fn a_valid_head_loads_and_scores_the_same() {
    let (h, info) = adapter_head();
    let bytes = head::to_bytes(&h, &info);
    let (back, back_info) = head::from_bytes(&bytes).unwrap();
    assert_eq!(back_info, info);
    let x = matrix(3, 8, 4.0);
    assert_eq!(back.logits(&x).data, h.logits(&x).data);
}

#[test]
fn a_head_with_a_weight_of_the_wrong_shape_is_refused() {
    let (h, info) = adapter_head();
    let bytes = head::to_bytes(&h, &info);
    // Same number of values, transposed: it used to load and give other probabilities.
    let msg = load_err(&edit(&bytes, |h, _| {
        h["visual.w1"]["shape"] = json!([2, 8]);
    }));
    assert!(
        msg.contains("tensor `visual.w1` has shape [2, 8], expected [8, _]"),
        "{msg}"
    );
    let msg = load_err(&edit(&bytes, |h, _| {
        h["visual.w2"]["shape"] = json!([8, 2]);
    }));
    assert!(
        msg.contains("`visual.w2` has shape [8, 2], expected [2, 8]"),
        "{msg}"
    );
    // A one-dimensional weight.
    let msg = load_err(&edit(&bytes, |h, _| {
        h["classes"]["shape"] = json!([48]);
    }));
    assert!(msg.contains("`classes` has shape [48]"), "{msg}");
}

#[test]
fn class_names_must_match_the_class_count() {
    let (h, mut info) = adapter_head();
    info.classnames.pop();
    let msg = load_err(&head::to_bytes(&h, &info));
    assert!(
        msg.contains("`classnames` names 5 class(es), but the head scores 6"),
        "{msg}"
    );
}

#[test]
fn options_are_parsed_strictly() {
    let (h, info) = adapter_head();
    let bytes = head::to_bytes(&h, &info);
    let msg = load_err(&edit(&bytes, |h, _| meta(h, "relu_out", "maybe")));
    assert!(
        msg.contains("`relu_out` is `maybe`, expected `true` or `false`"),
        "{msg}"
    );
    let msg = load_err(&edit(&bytes, |h, _| {
        h["__metadata__"]
            .as_object_mut()
            .unwrap()
            .remove("relu_out");
    }));
    assert!(msg.contains("metadata lacks `relu_out`"), "{msg}");
    let msg = load_err(&edit(&bytes, |h, _| meta(h, "options", "{not json")));
    assert!(
        msg.contains("metadata `options` is not valid JSON"),
        "{msg}"
    );
    let msg = load_err(&edit(&bytes, |h, _| meta(h, "classnames", "\"one\"")));
    assert!(
        msg.contains("metadata `classnames` is not valid JSON"),
        "{msg}"
    );
    let msg = load_err(&edit(&bytes, |h, _| meta(h, "version", "2")));
    assert!(msg.contains("version `2` is not supported"), "{msg}");
    let msg = load_err(&edit(&bytes, |h, _| meta(h, "format", "something-else")));
    assert!(msg.contains("format is `something-else`"), "{msg}");
    let msg = load_err(&edit(&bytes, |h, _| meta(h, "head", "mystery")));
    assert!(msg.contains("unknown head kind `mystery`"), "{msg}");
}

/// A head whose bytes changed after it was written (a bit flip, a truncated copy) is refused by
/// its checksum before anything is read from it.
#[test]
fn damaged_heads_are_refused() {
    let (h, info) = adapter_head();
    let mut bytes = head::to_bytes(&h, &info);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    let msg = load_err(&bytes);
    assert!(msg.contains("the data's checksum is"), "{msg}");
    let bytes = head::to_bytes(&h, &info);
    let msg = load_err(&bytes[..bytes.len() - 4]);
    assert!(msg.contains("not a clip-adapter head"), "{msg}");
}

#[test]
fn non_finite_weights_are_refused() {
    let (h, info) = adapter_head();
    let bytes = head::to_bytes(&h, &info);
    let msg = load_err(&edit(&bytes, |h, data| {
        let start = h["classes"]["data_offsets"][0].as_u64().unwrap() as usize;
        data[start + 12..start + 16].copy_from_slice(&f32::NAN.to_le_bytes());
    }));
    assert!(
        msg.contains("tensor `classes` holds NaN at position 3") && msg.contains("finite"),
        "{msg}"
    );
    let msg = load_err(&edit(&bytes, |h, data| {
        let start = h["logit_scale"]["data_offsets"][0].as_u64().unwrap() as usize;
        data[start..start + 4].copy_from_slice(&(-1f32).to_le_bytes());
    }));
    assert!(msg.contains("`logit_scale` is -1"), "{msg}");
}

#[test]
fn tensors_the_head_does_not_have_and_bad_cache_labels_are_refused() {
    let (h, info) = adapter_head();
    let bytes = head::to_bytes(&h, &info);
    // `visual.w1` renamed: the bottleneck would be silently dropped.
    let msg = load_err(&edit(&bytes, |h, _| {
        let t = h.remove("visual.w1").unwrap();
        h.insert("visual.w1_old".into(), t);
    }));
    assert!(msg.contains("`visual.w1` (D × H) is missing"), "{msg}");
    let msg = load_err(&edit(&bytes, |h, _| {
        let t = h.remove("alpha").unwrap();
        h.insert("gamma".into(), t);
    }));
    assert!(
        msg.contains("tensor `alpha` (one value) is missing"),
        "{msg}"
    );

    let tip = Head::new(TipHead {
        keys: matrix(4, 8, 5.0),
        values: vec![0, 1, 1, 0],
        alpha: 1.0,
        beta: 5.5,
        classes: matrix(2, 8, 6.0),
        logit_scale: 100.0,
    });
    let tip_info = HeadInfo {
        classnames: vec!["a".into(), "b".into()],
        method: "tip-adapter".into(),
        ..info.clone()
    };
    let bytes = head::to_bytes(&tip, &tip_info);
    assert!(head::from_bytes(&bytes).is_ok());
    let msg = load_err(&edit(&bytes, |h, data| {
        let start = h["values"]["data_offsets"][0].as_u64().unwrap() as usize;
        data[start + 4..start + 8].copy_from_slice(&7f32.to_le_bytes());
    }));
    assert!(
        msg.contains("`values` holds 7 at position 1; expected a class index 0..2"),
        "{msg}"
    );

    // A head that scores one class is always right: refused like a one-class dataset.
    let one = Head::new(TipHead {
        keys: matrix(1, 8, 5.0),
        values: vec![0],
        alpha: 1.0,
        beta: 5.5,
        classes: matrix(1, 8, 6.0),
        logit_scale: 100.0,
    });
    let one_info = HeadInfo {
        classnames: vec!["a".into()],
        ..tip_info
    };
    let msg = load_err(&head::to_bytes(&one, &one_info));
    assert!(msg.contains("a classifier needs at least 2"), "{msg}");

    let msg = load_err(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ");
    assert!(msg.contains("not a clip-adapter head"), "{msg}");
}

fn touch(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

#[test]
fn a_one_class_dataset_is_refused_whatever_its_source() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("only_cats");
    for i in 0..6 {
        touch(&folder, &format!("cat/{i}.jpg"));
    }
    let msg = chain(&from_class_folders(&folder, SeededSplit::default()).unwrap_err());
    assert!(
        msg.contains("only_cats")
            && msg.contains("1 class(es) (`cat`); a classifier needs at least 2"),
        "{msg}"
    );

    let csv = tmp.path().join("cats.csv");
    std::fs::write(&csv, "path,label\na.jpg,cat\nb.jpg,cat\nc.jpg,cat\n").unwrap();
    let msg = chain(&from_manifest(&csv, SeededSplit::default()).unwrap_err());
    assert!(
        msg.contains("cats.csv") && msg.contains("a classifier needs at least 2"),
        "{msg}"
    );

    let split = tmp.path().join("split_zhou_Cats.json");
    let rows = json!([["a.jpg", 0, "cat"], ["b.jpg", 0, "cat"]]);
    std::fs::write(
        &split,
        json!({"train": rows, "val": [], "test": rows}).to_string(),
    )
    .unwrap();
    let msg = chain(&split_file::read(&split).unwrap_err());
    assert!(
        msg.contains("split_zhou_Cats.json") && msg.contains("a classifier needs at least 2"),
        "{msg}"
    );

    // The command line stops before any model is loaded or anything is encoded.
    let out = clip_adapter(&[
        "extract",
        "--model",
        "no-such-model-is-needed",
        "--folder",
        folder.to_str().unwrap(),
    ]);
    assert_fails_with(&out, &["only_cats", "a classifier needs at least 2"]);
}

#[test]
fn a_split_file_without_one_of_its_keys_is_refused_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = json!([["a.jpg", 0, "cat"], ["b.jpg", 1, "dog"]]);
    for key in ["train", "val", "test"] {
        let mut doc = json!({"train": rows, "val": rows, "test": rows});
        doc.as_object_mut().unwrap().remove(key);
        let path = tmp.path().join(format!("no_{key}.json"));
        std::fs::write(&path, doc.to_string()).unwrap();
        let msg = chain(&split_file::read(&path).unwrap_err());
        assert!(
            msg.contains(&format!("no_{key}.json")) && msg.contains(&format!("no \"{key}\" key")),
            "{msg}"
        );
    }
}

#[test]
fn huge_labels_in_a_split_file_are_refused_before_any_allocation() {
    let tmp = tempfile::tempdir().unwrap();
    for huge in [u64::MAX, 1 << 63, 1_000_000_000, 100_000_000, 2] {
        let path = tmp.path().join(format!("split_{huge}.json"));
        // Labels 0 and `huge`: two distinct labels, so they must be 0 and 1.
        std::fs::write(
            &path,
            format!(
                r#"{{"train": [["a.jpg", 0, "cat"], ["b.jpg", {huge}, "dog"]], "val": [], "test": []}}"#
            ),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let msg = chain(&split_file::read(&path).unwrap_err());
        assert!(
            msg.contains(&format!(
                "`b.jpg` has label {huge}, but no image is labelled 1"
            )) && msg.contains("2 distinct labels"),
            "{msg}"
        );
        assert!(
            started.elapsed().as_secs() < 2,
            "{huge}: {:?}",
            started.elapsed()
        );
        // The command line says the same, without a panic.
        let out = clip_adapter(&["fewshot", "--split", path.to_str().unwrap(), "--shots", "1"]);
        assert_fails_with(&out, &["no image is labelled 1"]);
    }
    // Negative and fractional labels are not labels.
    let path = tmp.path().join("negative.json");
    std::fs::write(
        &path,
        r#"{"train": [["a.jpg", -1, "cat"]], "val": [], "test": []}"#,
    )
    .unwrap();
    assert!(chain(&split_file::read(&path).unwrap_err()).contains("invalid JSON"));
}

#[test]
fn long_class_names_are_cut_for_display_only() {
    let tmp = tempfile::tempdir().unwrap();
    let long = "x".repeat(70_000);
    // Named twice: the message shows both names cut, with their lengths.
    let path = tmp.path().join("twice.json");
    std::fs::write(
        &path,
        json!({"train": [["a.jpg", 0, long], ["b.jpg", 0, "y"]], "val": [], "test": []})
            .to_string(),
    )
    .unwrap();
    let msg = chain(&split_file::read(&path).unwrap_err());
    assert!(
        msg.contains("… (70000 characters)") && msg.len() < 500,
        "{}",
        msg.len()
    );

    // A valid split keeps the name whole (it goes into prompts and keys).
    std::fs::write(
        &path,
        json!({"train": [["a.jpg", 0, long], ["b.jpg", 1, "y"]], "val": [], "test": []})
            .to_string(),
    )
    .unwrap();
    assert_eq!(split_file::read(&path).unwrap().classnames[0], long);

    // The zero-shot table used to panic ("Formatting argument out of range") on such a label.
    let model = crate::common::fixture("models/tiny-clip");
    let image = &crate::common::input_images("tiny-clip")[0];
    let labels = format!("{},short", "y".repeat(65_536));
    let out = clip_adapter(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--labels",
        &labels,
        image.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("… (65536 characters)") && stdout.len() < 2000,
        "{stdout}"
    );
}

#[test]
fn manifests_with_a_byte_order_mark_crlf_quotes_and_non_ascii_parse() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("list.csv");
    let text = "\u{feff}path,label,split\r\n\
                \"images/a, b.jpg\",\"big \"\"cat\"\"\",train\r\n\
                images/ça/é.jpg,dog,train\r\n\
                images/日本/猫.png,dog,test\r\n\
                \r\n\
                images/c.jpg,\"big \"\"cat\"\"\",val\r\n";
    std::fs::write(&csv, text).unwrap();
    let m = from_manifest(&csv, SeededSplit::default()).unwrap();
    assert_eq!(m.classnames, ["big \"cat\"", "dog"]);
    let paths: Vec<&str> = m.train.iter().map(|s| s.impath.as_str()).collect();
    assert_eq!(paths, ["images/a, b.jpg", "images/ça/é.jpg"]);
    assert_eq!(m.test[0].impath, "images/日本/猫.png");
    assert_eq!(
        (m.train[0].label, m.val[0].label, m.test[0].label),
        (0, 0, 1)
    );

    // Without a header, with a BOM: the first row is data, not a class called `label`.
    std::fs::write(&csv, "\u{feff}a.jpg,cat\nb.jpg,dog\nc.jpg,cat\nd.jpg,dog\n").unwrap();
    let m = from_manifest(&csv, SeededSplit::default()).unwrap();
    assert_eq!(m.classnames, ["cat", "dog"]);

    // A malformed record names the line.
    std::fs::write(&csv, "path,label\na.jpg,cat\nb.jpg,,\n").unwrap();
    let msg = chain(&from_manifest(&csv, SeededSplit::default()).unwrap_err());
    assert!(
        msg.contains("list.csv:3") && msg.contains("empty path or label"),
        "{msg}"
    );
    std::fs::write(&csv, "a.jpg,cat\nb.jpg,dog,train,extra\n").unwrap();
    let msg = chain(&from_manifest(&csv, SeededSplit::default()).unwrap_err());
    assert!(
        msg.contains("list.csv:2") && msg.contains("got 4 field(s)"),
        "{msg}"
    );
}

#[test]
fn out_of_range_values_are_argument_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let split = tmp.path().join("s.json");
    std::fs::write(
        &split,
        r#"{"train": [["a.jpg", 0, "a"], ["b.jpg", 1, "b"]], "val": [], "test": []}"#,
    )
    .unwrap();
    let s = split.to_str().unwrap();
    let extract = |extra: &[&str]| {
        let mut args = vec!["extract", "--model", "unused", "--split", s];
        args.extend(extra);
        clip_adapter(&args)
    };
    let cases = [
        (
            clip_adapter(&["fewshot", "--split", s, "--shots", "0"]),
            "--shots",
        ),
        (extract(&["--crop-scale", "2,1"]), "--crop-scale"),
        (extract(&["--crop-scale", "0.5"]), "--crop-scale"),
        (extract(&["--shard", "3/3"]), "--shard"),
        (extract(&["--batch-size", "0"]), "--batch-size"),
        (extract(&["--chunk-batches", "0"]), "--chunk-batches"),
        (extract(&["--shots", "0"]), "--shots"),
        (extract(&["--name", "a/b"]), "--name"),
        (
            clip_adapter(&[
                "fewshot",
                "--split",
                s,
                "--shots",
                "1",
                "--train-fraction",
                "1.5",
            ]),
            "--train-fraction",
        ),
        (
            clip_adapter(&[
                "fewshot",
                "--split",
                s,
                "--shots",
                "1",
                "--train-fraction",
                "0.7",
                "--val-fraction",
                "0.5",
            ]),
            "add up to more than 1",
        ),
    ];
    for (out, needle) in cases {
        assert_eq!(
            out.status.code(),
            Some(2),
            "{needle}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_fails_with(&out, &[needle]);
    }
}

#[test]
fn an_error_names_its_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let gone = tmp.path().join("gone");
    for args in [
        vec![
            "fewshot",
            "--folder",
            gone.to_str().unwrap(),
            "--shots",
            "1",
        ],
        vec!["fewshot", "--split", gone.to_str().unwrap(), "--shots", "1"],
        vec!["datasets", "--manifest", gone.to_str().unwrap()],
    ] {
        let out = clip_adapter(&args);
        assert_fails_with(&out, &["gone", "No such file or directory"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.matches("No such file or directory").count(),
            1,
            "{stderr}"
        );
    }
}

#[test]
fn json_manifests_with_a_byte_order_mark_parse_and_empty_labels_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("list.json");
    std::fs::write(
        &path,
        "\u{feff}[{\"path\": \"a.jpg\", \"label\": \"cat\", \"split\": \"train\"}, \
         {\"path\": \"b.jpg\", \"label\": \"dog\", \"split\": \"train\"}]",
    )
    .unwrap();
    let m = from_manifest(&path, SeededSplit::default()).unwrap();
    assert_eq!(m.classnames, ["cat", "dog"]);
    std::fs::write(
        &path,
        r#"[{"path": "a.jpg", "label": "cat"}, {"path": "b.jpg", "label": " "}]"#,
    )
    .unwrap();
    let msg = chain(&from_manifest(&path, SeededSplit::default()).unwrap_err());
    assert!(
        msg.contains("list.json: entry 2: empty path or label"),
        "{msg}"
    );
}

// ---- sizes stated by model configs, tokenizer flags and data options ---------------------

/// A copy of fixture model `name` (every file) in a temp dir, with `config` (the file name
/// in the model's layout) replaced by `edit` of its JSON.
fn model_with_config(name: &str, config: &str, edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = crate::common::fixture(&format!("models/{name}"));
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let path = dir.path().join(config);
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut doc);
    std::fs::write(&path, doc.to_string()).unwrap();
    dir
}

/// The message of a config read by the library, which must be refused.
fn hf_config_err(edit: impl FnOnce(&mut Value)) -> String {
    let path = crate::common::fixture("models/tiny-clip/config.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut doc);
    let err = clip_adapter::clip::load::config::ClipConfig::from_hf_json(
        &doc.to_string(),
        Path::new("config.json"),
    )
    .expect_err("the config must be refused");
    assert!(
        matches!(err, clip_adapter::Error::Limit { .. }),
        "a limit error expected: {err}"
    );
    err.to_string()
}

fn open_clip_err(edit: impl FnOnce(&mut Value)) -> String {
    let path = crate::common::fixture("models/tiny-rn/open_clip_config.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut doc);
    let err = clip_adapter::clip::load::open_clip_config::from_json(
        &doc.to_string(),
        Path::new("open_clip_config.json"),
    )
    .expect_err("the config must be refused");
    err.to_string()
}

#[test]
fn absurd_sizes_in_a_transformers_config_are_refused_naming_the_field() {
    for (edit, needle) in [
        (
            json!(["vision_config", "intermediate_size", 1_000_000_000_000u64]),
            "config.json: vision_config.intermediate_size = 1000000000000 is above the limit of 65536",
        ),
        (
            json!(["vision_config", "image_size", 1u64 << 31]),
            "config.json: vision_config.image_size = 2147483648 is above the limit of 2048",
        ),
        (
            json!(["text_config", "num_hidden_layers", 1_000_000_000u64]),
            "config.json: text_config.num_hidden_layers = 1000000000 is above the limit of 256",
        ),
        (
            json!(["text_config", "vocab_size", 1u64 << 40]),
            "config.json: text_config.vocab_size = 1099511627776 is above the limit of 1048576",
        ),
        (
            json!(["text_config", "max_position_embeddings", 100_000]),
            "text_config.max_position_embeddings = 100000 is above the limit of 2048",
        ),
        (
            json!(["vision_config", "patch_size", 4096]),
            "vision_config.patch_size = 4096 is above the limit of 256",
        ),
    ] {
        let (tower, key, value) = (edit[0].as_str().unwrap(), edit[1].as_str().unwrap(), edit[2].clone());
        let msg = hf_config_err(|doc| doc[tower][key] = value);
        assert!(msg.contains(needle), "{msg}");
    }
    let msg = hf_config_err(|doc| doc["projection_dim"] = json!(1u64 << 40));
    assert!(
        msg.contains("projection_dim = 1099511627776 is above the limit of 16384"),
        "{msg}"
    );
    // A small patch on a large image: each size passes, the patch grid does not.
    let path = crate::common::fixture("models/tiny-clip/config.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    doc["vision_config"]["image_size"] = json!(2048);
    doc["vision_config"]["patch_size"] = json!(2);
    let msg = clip_adapter::clip::load::config::ClipConfig::from_hf_json(
        &doc.to_string(),
        Path::new("config.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.contains("vision positions = 1048577 is above the limit of 65537"),
        "{msg}"
    );
}

#[test]
fn absurd_sizes_in_an_open_clip_config_are_refused_naming_the_field() {
    for (edit, needle) in [
        (
            (
                &["model_cfg", "vision_cfg", "image_size"][..],
                json!(1_000_000_000u64),
            ),
            "open_clip_config.json: vision_cfg.image_size = 1000000000 is above the limit of 2048",
        ),
        (
            (
                &["model_cfg", "vision_cfg", "image_size"][..],
                json!(1u64 << 31),
            ),
            "vision_cfg.image_size = 2147483648 is above the limit of 2048",
        ),
        (
            (&["model_cfg", "embed_dim"][..], json!(1u64 << 40)),
            "model_cfg.embed_dim = 1099511627776 is above the limit of 16384",
        ),
        (
            (
                &["model_cfg", "text_cfg", "layers"][..],
                json!(1_000_000_000u64),
            ),
            "text_cfg.layers = 1000000000 is above the limit of 256",
        ),
        (
            (
                &["model_cfg", "vision_cfg", "layers"][..],
                json!([1, 2, 1_000_000_000u64, 1]),
            ),
            "vision_cfg.layers[2] = 1000000000 is above the limit of 256",
        ),
        (
            (&["model_cfg", "vision_cfg", "width"][..], json!(1u64 << 62)),
            "vision_cfg.width = 4611686018427387904 is above the limit of 16384",
        ),
        (
            (&["model_cfg", "text_cfg", "mlp_ratio"][..], json!(1e12)),
            "text_cfg.width x text_cfg.mlp_ratio = 16000000000000 is above the limit of 65536",
        ),
        (
            (
                &["model_cfg", "text_cfg", "context_length"][..],
                json!(100_000_000u64),
            ),
            "text_cfg.context_length = 100000000 is above the limit of 2048",
        ),
    ] {
        let ((keys, value), needle) = (edit, needle);
        let msg = open_clip_err(|doc| {
            let mut v = doc;
            for k in &keys[..keys.len() - 1] {
                v = &mut v[*k];
            }
            v[keys[keys.len() - 1]] = value;
        });
        assert!(msg.contains(needle), "{msg}");
    }
    let msg = open_clip_err(|doc| doc["model_cfg"]["text_cfg"]["mlp_ratio"] = json!(-1.0));
    assert!(
        msg.contains("text_cfg.mlp_ratio must be a positive number"),
        "{msg}"
    );
}

/// The reported case: the command aborted with "memory allocation of 1024 bytes failed".
#[test]
fn the_command_refuses_an_open_clip_image_size_of_a_billion() {
    let dir = model_with_config("tiny-rn", "open_clip_config.json", |doc| {
        doc["model_cfg"]["vision_cfg"]["image_size"] = json!(1_000_000_000u64);
    });
    let model = dir.path().to_str().unwrap();
    let out = clip_adapter(&["embed", "--model", model, "--text", "a"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_fails_with(
        &out,
        &["open_clip_config.json: vision_cfg.image_size = 1000000000 is above the limit of 2048"],
    );
}

/// A safetensors file of one 2 × 3 tensor `w` stored as `dtype` (4-byte elements).
fn one_tensor_safetensors(dtype: &str) -> Vec<u8> {
    let header = json!({"w": {"dtype": dtype, "shape": [2, 3], "data_offsets": [0, 24]}});
    let mut h = header.to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend((1..=6).flat_map(|v: i32| (v as f32).to_le_bytes()));
    out
}

#[test]
fn integer_weights_are_refused_naming_tensor_and_dtype() {
    use clip_adapter::clip::load::checkpoint::Checkpoint;
    use clip_adapter::clip::Layout;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let cpu = candle_core::Device::Cpu;
    std::fs::write(&path, one_tensor_safetensors("F32")).unwrap();
    let w = Checkpoint::open(&path, Layout::Transformers, &cpu)
        .unwrap()
        .get("w", &[2, 3])
        .unwrap();
    assert_eq!(
        w.to_vec2::<f32>().unwrap(),
        [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    );
    // The same bytes labelled I32: they used to load, as the integers those bits spell.
    std::fs::write(&path, one_tensor_safetensors("I32")).unwrap();
    let err = Checkpoint::open(&path, Layout::Transformers, &cpu)
        .unwrap()
        .get("w", &[2, 3])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "w.safetensors: tensor `w` is stored as I32, expected a float type (F32, F16, BF16 or F64)"
        ),
        "{err}"
    );

    // A whole model (f16 weights) with one of them relabelled I16, the same byte size: refused
    // by the command; relabelled BF16 (a float type of that size) it still loads.
    let src = crate::common::fixture("models/tiny-clip");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let weights = dir.path().join("model.safetensors");
    let original = std::fs::read(&weights).unwrap();
    let relabel = |dtype: &str| {
        let mut tensor = String::new();
        let bytes = edit(&original, |h, _| {
            let (name, entry) = h
                .iter_mut()
                .find(|(n, v)| n.ends_with("q_proj.weight") && v["dtype"] == "F16")
                .expect("an F16 weight");
            tensor = name.clone();
            entry["dtype"] = json!(dtype);
        });
        std::fs::write(&weights, bytes).unwrap();
        tensor
    };
    let tensor = relabel("I16");
    let out = clip_adapter(&[
        "embed",
        "--model",
        dir.path().to_str().unwrap(),
        "--text",
        "a",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_fails_with(
        &out,
        &[&format!(
            "tensor `{tensor}` is stored as I16, expected a float type"
        )],
    );
    relabel("BF16");
    let files = clip_adapter::clip::ModelFiles::in_dir(dir.path()).unwrap();
    assert!(clip_adapter::Clip::load(&files, &cpu).is_ok());
}

#[test]
fn tokenize_refuses_a_context_length_above_the_limit() {
    let out = clip_adapter(&["tokenize", "--context-length", "100000000", "a cat"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_fails_with(
        &out,
        &["--context-length = 100000000 is above the limit of 2048"],
    );
    // The limit itself is accepted.
    let out = clip_adapter(&["tokenize", "--context-length", "2048", "--json", "a cat"]);
    assert!(out.status.success(), "{out:?}");
    let ids: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ids[0].len(), 2048);
}

#[test]
fn data_options_above_their_limits_are_refused() {
    let split = split_file::parse(
        Path::new("split.json"),
        r#"{"train": [["a.jpg", 0, "cat"], ["b.jpg", 1, "dog"]], "val": [], "test": []}"#,
    )
    .unwrap();
    let dataset = clip_adapter::data::Dataset {
        name: "d".into(),
        classnames: split.classnames,
        image_root: "/nonexistent".into(),
        train: split.train,
        val: split.val,
        test: split.test,
        templates: vec!["a photo of a {}.".into()],
    };
    let err = clip_adapter::data::FewShot::coop(&dataset, 1_000_000, 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("shots = 1000000 is above the limit of 100000"),
        "{err}"
    );
    let err = clip_adapter::features::plan(
        &dataset,
        None,
        "m",
        &clip_adapter::image::Preprocess::clip(32),
        1_000_000,
        clip_adapter::image::augment::Augment::coop(32),
        1,
    )
    .unwrap_err();
    // The library names the option as its structs do; the command line spells the flag.
    assert!(
        err.to_string()
            .contains("`views` = 1000000 is above the limit of 1000"),
        "{err}"
    );
    assert!(
        matches!(&err, clip_adapter::features::FeatureError::Limit(l) if l.option && l.field == "views"),
        "{err:?}"
    );
}

#[test]
fn pretraining_shapes_above_the_limits_are_refused_naming_the_option() {
    use clip_adapter::pretrain::ModelShape;
    let shape = ModelShape {
        vision_width: 1 << 40,
        ..ModelShape::default()
    };
    let msg = shape.validate().unwrap_err().to_string();
    assert!(
        msg.contains("`vision_width` = 1099511627776 is above the limit of 16384"),
        "{msg}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("model");
    let out_dir = out_dir.to_str().unwrap();
    let out = clip_adapter(&[
        "pretrain",
        "--out",
        out_dir,
        "--vision-width",
        "1099511627776",
    ]);
    assert!(!dir.path().join("model").exists(), "nothing is written");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--vision-width = 1099511627776 is above the limit of 16384"),
        "{stderr}"
    );
}
