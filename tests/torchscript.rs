//! OpenAI's own checkpoint files: TorchScript archives (`RN50.pt`, `ViT-B-32.pt`) and
//! `torch.save`d state dicts with OpenAI's names, their architecture inferred from the shapes.
//!
//! Fixtures: tests/fixtures/models/{openai-rn,openai-vit}, written by
//! scripts/fixtures/torchscript.py (torch 2.15.0; OpenAI's `clip/model.py` reproduced there and
//! checked against open_clip 3.3.0). Reference: fp32 embeddings of the stored fp16-rounded
//! weights. Tolerance 1e-4 absolute for texts and ViT images; the ResNet's image embeddings
//! relative to their largest magnitude, as in parity_open_clip.rs. The archive and the state dict
//! hold the same values, so they must give bit-identical embeddings.

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clip_adapter::clip::hub::{self, HubOptions};
use clip_adapter::clip::load::checkpoint::Checkpoint;
use clip_adapter::clip::load::pickle::PickleError;
use clip_adapter::clip::load::torch_archive::ArchiveError;
use clip_adapter::clip::{Clip, Layout, ModelFiles, VisionTower};
use clip_adapter::encode::encode_image_files;
use clip_adapter::Error;

use crate::common::{
    assert_close, assert_fails_with, clip_adapter_env, fixture, input_images, inputs,
    load_expected, max_abs_diff, stdout_json,
};

const TOL: f32 = 1e-4;

fn file(model: &str, name: &str) -> PathBuf {
    fixture(&format!("models/{model}/{name}"))
}

fn load_file(path: &Path) -> Result<Clip, Error> {
    Clip::load(&ModelFiles::single_file(path)?, &Device::Cpu)
}

fn ids(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

/// `max |a - b| / max |b| <= tol`.
fn assert_close_relative(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let scale = b
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(a, b) / scale.max(1e-12);
    println!("{what}: max abs diff / max |reference| = {d:.3e} (tolerance {tol:.0e})");
    assert!(d <= tol, "{what}: relative diff {d} > {tol}");
}

/// Both files of a fixture embed like the reference, and identically to each other.
fn check_model(model: &str, relative_images: bool) -> Clip {
    let expected = load_expected(model);
    let archive = load_file(&file(model, "model.pt")).unwrap();
    let state_dict = load_file(&file(model, "state_dict.pt")).unwrap();
    let want = inputs(model)["logit_scale"].as_f64().unwrap() as f32;
    let pixels = &expected["pixel_values"];
    let tokens = ids(&expected["input_ids"]);
    let mut embeds = Vec::new();
    for (what, clip) in [("archive", &archive), ("state dict", &state_dict)] {
        assert!((clip.logit_scale() / want - 1.0).abs() < 1e-6, "{what}");
        let image = clip.encode_image(pixels).unwrap();
        let text = clip.encode_tokens(&tokens).unwrap();
        let name = format!("{model} {what}");
        if relative_images {
            assert_close_relative(
                &format!("{name} image"),
                &image,
                &expected["image_embeds"],
                TOL,
            );
        } else {
            assert_close(
                &format!("{name} image"),
                &image,
                &expected["image_embeds"],
                TOL,
            );
        }
        assert_close(
            &format!("{name} text"),
            &text,
            &expected["text_embeds"],
            TOL,
        );
        embeds.push((image, text));
    }
    assert_eq!(
        max_abs_diff(&embeds[0].0, &embeds[1].0),
        0.0,
        "{model} images"
    );
    assert_eq!(
        max_abs_diff(&embeds[0].1, &embeds[1].1),
        0.0,
        "{model} texts"
    );
    archive
}

#[test]
fn resnet_archive_and_state_dict_match_the_reference() {
    let clip = check_model("openai-rn", true);
    let c = clip.config();
    assert_eq!(c.layout, Layout::OpenClip);
    assert_eq!(c.embed_dim, 32);
    assert_eq!((c.text.width, c.text.heads, c.text.layers), (64, 1, 1));
    assert_eq!((c.text.context_length, c.text.vocab_size), (8, 64));
    match &c.vision {
        VisionTower::ResNet(r) => {
            assert_eq!(
                (r.layers, r.width, r.heads, r.image_size),
                ([1, 2, 1, 1], 4, 2, 64)
            )
        }
        other => panic!("expected a ResNet, inferred {other:?}"),
    }
    // Through our preprocessing, from the image files.
    let paths = input_images("openai-rn");
    let from_files = encode_image_files(&clip, &paths, 2, &mut |_, _| {}).unwrap();
    let expected = load_expected("openai-rn");
    assert_close_relative(
        "openai-rn from files",
        &from_files,
        &expected["image_embeds"],
        TOL,
    );
}

#[test]
fn vit_archive_and_state_dict_match_the_reference() {
    let clip = check_model("openai-vit", false);
    assert_eq!(clip.config().text.layers, 2);
    match &clip.config().vision {
        VisionTower::Vit(v) => assert_eq!(
            (v.width, v.layers, v.heads, v.patch_size, v.image_size),
            (64, 1, 1, 8, 32)
        ),
        other => panic!("expected a ViT, inferred {other:?}"),
    }
}

#[test]
fn archives_are_told_from_state_dicts() {
    let open = |p: &Path| Checkpoint::open(p, Layout::OpenClip, &Device::Cpu).unwrap();
    let archive = open(&file("openai-vit", "model.pt"));
    let state_dict = open(&file("openai-vit", "state_dict.pt"));
    assert!(archive.is_torchscript());
    assert!(!state_dict.is_torchscript());
    // The archive has OpenAI's three scalar buffers on top of the state dict's tensors.
    let mut names: Vec<&str> = archive.names().collect();
    names.retain(|n| !["input_resolution", "context_length", "vocab_size"].contains(n));
    assert_eq!(names, state_dict.names().collect::<Vec<_>>());
}

/// A `clip` package cache laid out by the test: `<root>/clip/<file>.pt`.
fn openai_cache(files: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("clip")).unwrap();
    for f in files {
        std::fs::copy(
            file("openai-vit", "model.pt"),
            root.path().join("clip").join(f),
        )
        .unwrap();
    }
    root
}

#[test]
fn openai_names_resolve_in_the_clip_cache() {
    let root = openai_cache(&["ViT-B-32.pt", "ViT-L-14-336px.pt"]);
    let mut opts = HubOptions::from_env();
    opts.openai_cache = root.path().join("clip");
    opts.offline = true;
    for (spec, file) in [
        ("openai:ViT-B/32", "ViT-B-32.pt"),
        ("openai:ViT-B-32", "ViT-B-32.pt"),
        ("openai:ViT-L/14@336px", "ViT-L-14-336px.pt"),
    ] {
        let files = hub::resolve(spec, &opts, &mut |_, _, _| {}).unwrap();
        assert_eq!(files.weights, opts.openai_cache.join(file), "{spec}");
        assert!(files.config.is_none());
    }
    let msg = hub::resolve("openai:RN50", &opts, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    let expected_path = opts.openai_cache.join("RN50.pt");
    assert!(
        msg.contains(&expected_path.display().to_string()) && msg.contains("clip.load(\"RN50\")"),
        "{msg}"
    );
    let msg = hub::resolve("openai:RN51", &opts, &mut |_, _, _| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("ViT-L/14@336px"), "lists the names: {msg}");
}

#[test]
fn cli_reads_openai_names_and_files() {
    let root = openai_cache(&["ViT-B-32.pt"]);
    let image = input_images("openai-vit")[0].display().to_string();
    let xdg = root.path().display().to_string();
    let env = [("XDG_CACHE_HOME", xdg.as_str())];
    let expected = load_expected("openai-vit");
    let first = expected["image_embeds"].get(0).unwrap();
    let model_pt = file("openai-vit", "model.pt").display().to_string();
    for model in ["openai:ViT-B/32", model_pt.as_str()] {
        let out = clip_adapter_env(
            &["embed", "--model", model, "--image", &image, "--json"],
            &env,
        );
        let json = stdout_json(&out);
        let got: Vec<f32> = serde_json::from_value(json["images"][0]["embedding"].clone()).unwrap();
        let got = Tensor::new(got, &Device::Cpu).unwrap();
        assert_close(&format!("cli {model}"), &got, &first, TOL);
    }
    let out = clip_adapter_env(
        &["embed", "--model", "openai:RN101", "--image", &image],
        &env,
    );
    assert_fails_with(&out, &["RN101.pt", "clip.load"]);
}

// ---- malformed files -------------------------------------------------------------------------

/// A zip of `entries`, stored uncompressed as PyTorch writes them.
fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

fn binunicode(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn binint(out: &mut Vec<u8>, v: i32) {
    out.push(b'J');
    out.extend(v.to_le_bytes());
}

/// `torch.save({"w": tensor})` as PyTorch pickles it, for a float storage of `numel` elements
/// viewed with `shape` (contiguous) at `offset`.
fn state_dict_pickle(numel: i32, offset: i32, shape: &[i32]) -> Vec<u8> {
    let mut p = b"\x80\x02}(".to_vec();
    binunicode(&mut p, "w");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    binunicode(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    binunicode(&mut p, "0");
    binunicode(&mut p, "cpu");
    binint(&mut p, numel);
    p.extend(b"tQ");
    binint(&mut p, offset);
    p.push(b'(');
    for &d in shape {
        binint(&mut p, d);
    }
    p.extend(b"t(");
    let mut stride = 1;
    let mut strides = Vec::new();
    for &d in shape.iter().rev() {
        strides.push(stride);
        stride *= d;
    }
    for s in strides.into_iter().rev() {
        binint(&mut p, s);
    }
    p.extend(b"t\x89ccollections\nOrderedDict\n)RtRu.");
    p
}

fn open_err(path: &Path) -> Error {
    match Checkpoint::open(path, Layout::OpenClip, &Device::Cpu) {
        Ok(_) => panic!("{} should not open", path.display()),
        Err(e) => e,
    }
}

/// The full message, sources included, as the command line prints it.
fn chain(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn archive_error(e: &Error) -> &ArchiveError {
    match e {
        Error::Archive { source, .. } => source.as_ref(),
        other => panic!("expected an archive error, got {other}"),
    }
}

#[test]
fn a_hand_made_state_dict_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pt");
    let values: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let pickle = state_dict_pickle(7, 1, &[2, 3]);
    write_zip(
        &path,
        &[("archive/data.pkl", &pickle), ("archive/data/0", &values)],
    );
    let ckpt = Checkpoint::open(&path, Layout::OpenClip, &Device::Cpu).unwrap();
    let w = ckpt.get("w", &[2, 3]).unwrap();
    assert_eq!(
        w.to_vec2::<f32>().unwrap(),
        [[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]
    );
}

#[test]
fn malformed_archives_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.pt");
    let four = 1.0f32.to_le_bytes();

    // Truncated: half of a real archive (the zip directory at its end is gone).
    let whole = std::fs::read(file("openai-rn", "model.pt")).unwrap();
    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    let e = open_err(&path);
    assert!(
        matches!(archive_error(&e), ArchiveError::Zip(_)),
        "{}",
        chain(&e)
    );
    assert!(
        chain(&e).contains("bad.pt") && chain(&e).contains("not a readable zip"),
        "{}",
        chain(&e)
    );

    // An opcode PyTorch never writes (protocol 0's INT) is refused, not interpreted.
    write_zip(
        &path,
        &[
            ("archive/data.pkl", b"\x80\x02I12\n."),
            ("archive/data/0", &four),
        ],
    );
    let e = open_err(&path);
    assert!(
        matches!(
            archive_error(&e),
            ArchiveError::Pickle {
                source: PickleError::UnsupportedOpcode {
                    offset: 2,
                    opcode: b'I'
                },
                ..
            }
        ),
        "{}",
        chain(&e)
    );
    assert!(
        chain(&e).contains("archive/data.pkl") && chain(&e).contains("byte 2"),
        "{}",
        chain(&e)
    );

    // A storage that declares 2^31 - 1 floats (8 GiB) but holds 4 bytes: refused before reading.
    let pickle = state_dict_pickle(i32::MAX, 0, &[1]);
    write_zip(
        &path,
        &[("archive/data.pkl", &pickle), ("archive/data/0", &four)],
    );
    let e = open_err(&path);
    assert!(
        matches!(
            archive_error(&e),
            ArchiveError::StorageSize { actual: 4, .. }
        ),
        "{}",
        chain(&e)
    );
    assert!(chain(&e).contains("8589934588 bytes"), "{}", chain(&e));

    // A view reaching past its storage.
    let pickle = state_dict_pickle(1, 0, &[1000, 1000]);
    write_zip(
        &path,
        &[("archive/data.pkl", &pickle), ("archive/data/0", &four)],
    );
    let e = open_err(&path);
    assert!(
        chain(&e).contains("reaches element 999999"),
        "{}",
        chain(&e)
    );

    // A missing storage entry.
    let pickle = state_dict_pickle(1, 0, &[1]);
    write_zip(&path, &[("archive/data.pkl", &pickle)]);
    let e = open_err(&path);
    assert!(
        matches!(archive_error(&e), ArchiveError::MissingStorage { .. }),
        "{}",
        chain(&e)
    );

    // Deep nesting: a million MARKs, and tuples in tuples.
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b'(', 1_000_000));
    write_zip(&path, &[("archive/data.pkl", &deep)]);
    let e = open_err(&path);
    assert!(
        chain(&e).contains("more than 64 nested MARKs"),
        "{}",
        chain(&e)
    );
    let mut deep = b"\x80\x02)".to_vec();
    deep.extend(std::iter::repeat_n(0x85u8, 100_000)); // TUPLE1
    deep.push(b'.');
    write_zip(&path, &[("archive/data.pkl", &deep)]);
    let e = open_err(&path);
    assert!(
        chain(&e).contains("more than 64 nested tuples"),
        "{}",
        chain(&e)
    );

    // A string that claims 4 GiB.
    write_zip(
        &path,
        &[("archive/data.pkl", b"\x80\x02X\xff\xff\xff\xffabc.")],
    );
    let e = open_err(&path);
    assert!(
        matches!(
            archive_error(&e),
            ArchiveError::Pickle {
                source: PickleError::Truncated { .. },
                ..
            }
        ),
        "{}",
        chain(&e)
    );

    // Not tensors at all; no data.pkl; not an archive.
    write_zip(&path, &[("archive/data.pkl", b"\x80\x02K\x07.")]);
    assert!(chain(&open_err(&path)).contains("an integer, not a state dict"));
    write_zip(&path, &[("archive/other", b"x")]);
    assert!(chain(&open_err(&path)).contains("no `*/data.pkl`"));
    std::fs::write(&path, b"\x80\x02}q\x00.").unwrap();
    assert!(
        chain(&open_err(&path)).contains("not read"),
        "legacy format"
    );
}

#[test]
fn a_state_dict_that_is_not_clip_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.pt");
    let pickle = state_dict_pickle(1, 0, &[1]);
    write_zip(
        &path,
        &[
            ("archive/data.pkl", &pickle),
            ("archive/data/0", &1f32.to_le_bytes()),
        ],
    );
    let msg = chain(&load_file(&path).err().unwrap());
    assert!(
        msg.contains("w.pt") && msg.contains("not an OpenAI CLIP checkpoint"),
        "{msg}"
    );
}

/// A zip directory that claims a 2 GiB storage in a file of a few hundred bytes (and a pickle
/// that agrees with it) is refused before anything is allocated.
#[test]
fn a_storage_larger_than_the_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.pt");
    let numel = 0x1fff_ffff_i32;
    let pickle = state_dict_pickle(numel, 0, &[1]);
    write_zip(
        &path,
        &[("archive/data.pkl", &pickle), ("archive/data/0", &[0u8; 4])],
    );
    let mut bytes = std::fs::read(&path).unwrap();
    // The central directory record of `archive/data/0`: sizes at offsets 20 and 24.
    let name = b"archive/data/0";
    let at = (0..bytes.len() - 46)
        .find(|&i| bytes[i..].starts_with(b"PK\x01\x02") && bytes[i + 46..].starts_with(name))
        .expect("central directory record");
    let size = (numel as u32 * 4).to_le_bytes();
    bytes[at + 20..at + 24].copy_from_slice(&size);
    bytes[at + 24..at + 28].copy_from_slice(&size);
    std::fs::write(&path, &bytes).unwrap();
    let e = open_err(&path);
    assert!(
        matches!(archive_error(&e), ArchiveError::EntryTooLarge { .. }),
        "{}",
        chain(&e)
    );
    assert!(
        chain(&e).contains("more than the whole archive"),
        "{}",
        chain(&e)
    );
}
