//! The command line as scripts use it: the documented JSON shapes, exit codes and errors.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::common::{
    assert_fails_with, clip_adapter, clip_adapter_env, fixture, load_expected, max_abs_diff,
    stdout_json,
};

fn model() -> String {
    fixture("models/tiny-clip").display().to_string()
}

fn image(name: &str) -> String {
    fixture(&format!("models/images/{name}"))
        .display()
        .to_string()
}

#[test]
fn tokenize_json_prints_77_ids_per_text() {
    let out = clip_adapter(&["tokenize", "--json", "a photo of a cat.", "dog"]);
    let ids: Vec<Vec<u32>> = serde_json::from_value(stdout_json(&out)).unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0][..8], [49406, 320, 1125, 539, 320, 2368, 269, 49407]);
    assert!(ids.iter().all(|t| t.len() == 77));
    assert!(ids[1][3..].iter().all(|&t| t == 0));
}

#[test]
fn embed_json_matches_the_reference() {
    let expected = load_expected("tiny-clip");
    let out = clip_adapter(&[
        "embed",
        "--model",
        &model(),
        "--image",
        &image("red_square.png"),
        "--text",
        "a photo of a cat.",
        "--json",
    ]);
    let doc = stdout_json(&out);
    assert_eq!(doc["images"][0]["path"], image("red_square.png"));
    assert_eq!(doc["texts"][0]["text"], "a photo of a cat.");
    let vec = |v: &serde_json::Value| -> Vec<f32> { serde_json::from_value(v.clone()).unwrap() };
    let img = candle_core::Tensor::new(
        vec(&doc["images"][0]["embedding"]),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let txt = candle_core::Tensor::new(
        vec(&doc["texts"][0]["embedding"]),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    // red_square.png is the first fixture image and "a photo of a cat." the first text.
    let want_img = expected["image_embeds"].get(0).unwrap();
    let want_txt = expected["text_embeds"].get(0).unwrap();
    assert!(max_abs_diff(&img, &want_img) < 1e-4);
    assert!(max_abs_diff(&txt, &want_txt) < 1e-4);
}

#[test]
fn classify_json_ranks_all_labels() {
    let out = clip_adapter(&[
        "classify",
        "--model",
        &model(),
        "--labels",
        "cat,dog,red square",
        "--template",
        "a photo of a {}.",
        "--template",
        "a drawing of a {}.",
        "--top-k",
        "3",
        "--json",
        &image("red_square.png"),
        &image("noise.jpg"),
    ]);
    let doc = stdout_json(&out);
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        let preds = r["predictions"].as_array().unwrap();
        assert_eq!(preds.len(), 3);
        let p: Vec<f64> = preds
            .iter()
            .map(|p| p["probability"].as_f64().unwrap())
            .collect();
        assert!(p.windows(2).all(|w| w[0] >= w[1]), "not sorted: {p:?}");
        assert!(
            (p.iter().sum::<f64>() - 1.0).abs() < 1e-4,
            "3 of 3 labels sum to 1: {p:?}"
        );
    }
    let want = crate::common::inputs("tiny-clip")["logit_scale"]
        .as_f64()
        .unwrap();
    assert!((doc["logit_scale"].as_f64().unwrap() / want - 1.0).abs() < 1e-5);
}

#[test]
fn classify_table_output() {
    let out = clip_adapter(&[
        "classify",
        "--model",
        &model(),
        "--labels",
        "cat,dog",
        &image("red_square.png"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("red_square.png") && text.contains(" 1. ") && text.contains('%'),
        "{text}"
    );
}

#[test]
fn bad_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jpg");
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, b"this is not an image at all").unwrap();
    let truncated = dir.path().join("truncated.jpg");
    let jpeg = std::fs::read(image("noise.jpg")).unwrap();
    std::fs::write(&truncated, &jpeg[..jpeg.len() / 2]).unwrap();
    for bad in [&missing, &empty, &text, &truncated] {
        let path = bad.display().to_string();
        let out = clip_adapter(&[
            "classify",
            "--model",
            &model(),
            "--labels",
            "cat,dog",
            &path,
        ]);
        assert_fails_with(&out, &[&path]);
        let out = clip_adapter(&["embed", "--model", &model(), "--image", &path]);
        assert_fails_with(&out, &[&path]);
    }
}

#[test]
fn zero_sized_and_unsupported_images_are_named() {
    for name in [
        "zero_width.png",
        "zero_height.bmp",
        "zero_size.gif",
        "tiff.png",
        "twelve_bit.jpg",
    ] {
        let path = fixture(&format!("images/bad/{name}")).display().to_string();
        let out = clip_adapter(&[
            "classify",
            "--model",
            &model(),
            "--labels",
            "cat,dog",
            &path,
        ]);
        assert_fails_with(&out, &[&path]);
    }
}

#[test]
fn empty_label_list_is_refused() {
    for labels in ["", ",", " , "] {
        let out = clip_adapter(&[
            "classify",
            "--model",
            &model(),
            "--labels",
            labels,
            &image("noise.jpg"),
        ]);
        assert_fails_with(&out, &["label list is empty"]);
    }
    let out = clip_adapter(&[
        "classify",
        "--model",
        &model(),
        "--labels",
        "cat",
        "--template",
        "no placeholder",
        &image("noise.jpg"),
    ]);
    assert_fails_with(&out, &["no placeholder", "{}"]);
}

#[test]
fn missing_model_is_explained() {
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().display().to_string();
    let out = clip_adapter_env(
        &[
            "embed",
            "--model",
            "openai/clip-vit-base-patch32",
            "--text",
            "x",
        ],
        &[("HF_HUB_CACHE", &cache_dir), ("HF_HUB_OFFLINE", "1")],
    );
    assert_fails_with(
        &out,
        &[
            "openai/clip-vit-base-patch32",
            &cache_dir,
            "config.json",
            "HF_HUB_OFFLINE",
        ],
    );

    let out = clip_adapter(&["embed", "--model", "/no/such/model/dir", "--text", "x"]);
    assert_fails_with(&out, &["/no/such/model/dir", "no such directory"]);
}

/// Lays out `files` as huggingface_hub's cache does for `repo` at `commit`.
fn fill_cache(cache: &Path, repo: &str, commit: &str, files: &[PathBuf]) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs/main"), commit).unwrap();
    for f in files {
        std::fs::copy(f, snapshot.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn hub_id_is_read_from_the_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    let src = fixture("models/tiny-clip");
    fill_cache(
        cache.path(),
        "openai/clip-vit-base-patch32",
        "0123456789abcdef0123456789abcdef01234567",
        &[src.join("config.json"), src.join("model.safetensors")],
    );
    let cache_dir = cache.path().display().to_string();
    let out = clip_adapter_env(
        &[
            "embed",
            "--model",
            "openai/clip-vit-base-patch32",
            "--text",
            "a photo of a cat.",
            "--json",
        ],
        &[("HF_HUB_CACHE", &cache_dir), ("HF_HUB_OFFLINE", "1")],
    );
    let doc = stdout_json(&out);
    assert_eq!(doc["texts"][0]["embedding"].as_array().unwrap().len(), 24);
}

/// Serves `dir` the way the hub's `resolve` endpoint does, for `requests` requests.
fn serve(dir: PathBuf, commit: &'static str, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() == 0 || header == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let file = path.rsplit('/').next().unwrap_or("");
            match std::fs::read(dir.join(file)) {
                Ok(body) if path.contains("/resolve/main/") => {
                    write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Repo-Commit: {commit}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
                    stream.write_all(&body).unwrap();
                }
                _ => {
                    write!(
                        stream,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .unwrap();
                }
            }
        }
    });
    format!("http://{addr}")
}

#[test]
fn hub_id_is_downloaded_into_the_cache() {
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    // config.json, model.safetensors (404), pytorch_model.bin, then three tokenizer files (404).
    let endpoint = serve(fixture("models/tiny-clip-bin"), commit, 6);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().display().to_string();
    let out = clip_adapter_env(
        &[
            "embed",
            "--model",
            "someone/tiny-clip",
            "--image",
            &image("noise.jpg"),
            "--json",
        ],
        &[("HF_HUB_CACHE", &cache_dir), ("HF_ENDPOINT", &endpoint)],
    );
    let doc = stdout_json(&out);
    assert_eq!(doc["images"][0]["embedding"].as_array().unwrap().len(), 16);
    let repo = cache.path().join("models--someone--tiny-clip");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        commit
    );
    assert!(repo
        .join("snapshots")
        .join(commit)
        .join("pytorch_model.bin")
        .is_file());

    // The server is gone now: the cache alone must serve the model, offline.
    let out = clip_adapter_env(
        &[
            "embed",
            "--model",
            "someone/tiny-clip",
            "--image",
            &image("noise.jpg"),
            "--json",
        ],
        &[("HF_HUB_CACHE", &cache_dir), ("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(stdout_json(&out)["images"], doc["images"]);
}

#[test]
fn open_clip_hub_id_is_downloaded_and_classifies() {
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    // config.json (404), open_clip_config.json, open_clip_model.safetensors, 3 tokenizer files (404).
    let endpoint = serve(fixture("models/tiny-rn"), commit, 6);
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().display().to_string();
    let out = clip_adapter_env(
        &[
            "classify",
            "--model",
            "timm/tiny-rn.openai",
            "--labels",
            "cat,dog",
            "--json",
            &image("noise.jpg"),
        ],
        &[("HF_HUB_CACHE", &cache_dir), ("HF_ENDPOINT", &endpoint)],
    );
    let doc = stdout_json(&out);
    assert_eq!(
        doc["results"][0]["predictions"].as_array().unwrap().len(),
        2
    );
    let snapshot = cache
        .path()
        .join("models--timm--tiny-rn.openai/snapshots")
        .join(commit);
    assert!(snapshot.join("open_clip_model.safetensors").is_file());
    assert!(!snapshot.join("config.json").exists());
}

#[test]
fn counts_of_zero_are_refused_by_the_parser() {
    for args in [
        &["tokenize", "--context-length", "0", "a cat"][..],
        &["tokenize", "--context-length", "1", "a cat"][..],
        &[
            "classify", "--model", "m", "--labels", "a,b", "--top-k", "0", "x.png",
        ][..],
        &["demo", "--shots", "0"][..],
    ] {
        let out = clip_adapter(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("at least"), "{args:?}: {stderr}");
    }
}

#[test]
fn help_lists_the_librarys_methods_and_tasks() {
    let demo = String::from_utf8_lossy(&clip_adapter(&["demo", "--help"]).stdout).into_owned();
    for t in clip_adapter::demo::task_names() {
        assert!(demo.contains(t), "demo --help lacks task {t}: {demo}");
    }
    let run = String::from_utf8_lossy(&clip_adapter(&["run", "--help"]).stdout).into_owned();
    for m in clip_adapter::methods::MethodKind::all() {
        assert!(run.contains(m.name()), "run --help lacks {m}: {run}");
    }
    // Every option of run, fit and predict says what it is.
    for cmd in ["run", "fit", "predict"] {
        let help = String::from_utf8_lossy(&clip_adapter(&[cmd, "--help"]).stdout).into_owned();
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if t.starts_with("--") && !t.contains("  ") {
                let next = lines.get(i + 1).map_or("", |n| n.trim());
                assert!(
                    !next.is_empty() && !next.starts_with('-'),
                    "{cmd}: `{t}` has no help text"
                );
            }
        }
    }
}

#[test]
fn method_options_are_the_librarys_with_its_help_and_checks() {
    use clip_adapter::methods::OPTIONS;
    let help = String::from_utf8_lossy(&clip_adapter(&["run", "--help"]).stdout).into_owned();
    for o in OPTIONS {
        assert!(
            help.contains(&format!("--{}", o.name)),
            "run --help lacks --{}",
            o.name
        );
        let first_words: String = o
            .help
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            help.contains(&first_words),
            "--{}: {first_words:?} not in {help}",
            o.name
        );
    }
    // A value the library refuses is an argument error, before anything runs.
    let fit = [
        "fit",
        "--method",
        "clip-adapter",
        "--dataset",
        "d",
        "--shots",
        "1",
    ];
    for (flag, value, says) in [
        ("--epochs", "0", "at least 1"),
        ("--alpha", "inf", "finite"),
    ] {
        let out = clip_adapter(&[&fit[..], &[flag, value]].concat());
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}

/// A reader that stops early (`clip-adapter tokenize ... | head -1`) is not an error: no panic,
/// no message, exit status 0.
#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    use std::process::{Command, Stdio};
    // More than a pipe's buffer (64 KiB), so that writing meets the closed end.
    let texts: Vec<String> = (0..2000)
        .map(|i| format!("a photo of cat number {i}"))
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_clip-adapter"))
        .arg("tokenize")
        .args(&texts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// An error names its cause once, even where a library error both quotes its source in its
/// message and returns it as its source.
#[test]
fn error_causes_are_printed_once() {
    let out = crate::common::clip_adapter(&[
        "predict",
        "--adapter",
        "/nonexistent/head.safetensors",
        "x.jpg",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
