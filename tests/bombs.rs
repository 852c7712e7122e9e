//! Decompression and size bombs through the command line: image headers that declare
//! 65,535 × 65,535 pixels, a GIF of 10,000 frames, list files of 2 GiB. Each is answered with an
//! error (or, for the GIF, its first frame) in bounded time and memory; the child's peak
//! resident memory is read from `wait4` and printed, the figures docs/reliability.md quotes.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Above this a bomb was not stopped early: the debug binary answers the tests' bad inputs in
/// well under 100 MB.
const MEMORY_BOUND_KIB: u64 = 300 * 1024;
const TIME_BOUND: Duration = Duration::from_secs(20);

/// Runs the command line; returns its exit code, its stderr and its peak resident memory in KiB.
// The child is reaped by `wait4`, which std's `wait` cannot replace: only it returns the usage.
#[allow(clippy::zombie_processes)]
fn measured(dir: &Path, args: &[&str]) -> (i32, String, u64) {
    let err = tempfile::tempfile().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_clip-adapter"))
        .args(args)
        .arg("--quiet")
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: the child is ours and not waited for by anything else; `usage` is a valid rusage.
    let waited = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as i32, "wait4");
    let stderr = {
        use std::io::{Read, Seek};
        let mut e = err;
        e.rewind().unwrap();
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        s
    };
    assert!(libc::WIFEXITED(status), "killed by a signal: {stderr}");
    (libc::WEXITSTATUS(status), stderr, usage.ru_maxrss as u64)
}

fn check_bounded(what: &str, started: Instant, peak_kib: u64) {
    let took = started.elapsed();
    eprintln!(
        "{what}: {:.2} s, peak RSS {:.1} MB",
        took.as_secs_f64(),
        peak_kib as f64 / 1024.0
    );
    assert!(took < TIME_BOUND, "{what}: {took:?}");
    assert!(peak_kib < MEMORY_BOUND_KIB, "{what}: peak {peak_kib} KiB");
}

/// A PNG, a JPEG and a WebP whose headers declare 65,535 × 65,535 pixels, and a GIF of 10,000
/// frames, in one class folder each, three copies of each (enough for a train/val/test split).
fn write_bombs(data: &Path) {
    let side = 65_535u32;
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&side.to_be_bytes());
    png.extend_from_slice(&side.to_be_bytes());
    png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
    // SOI, then a baseline SOF0 of 8 bits, 65,535 × 65,535, 3 components.
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8, 0xFF, 0xFF, 0xFF, 0xFF, 3];
    for id in 1..=3u8 {
        jpeg.extend_from_slice(&[id, 0x11, 0]);
    }
    jpeg.extend_from_slice(&[0xFF, 0xD9]);
    // RIFF/WEBP with a VP8X canvas of 65,535 × 65,535 (24-bit sizes minus one).
    let mut vp8x = vec![0u8; 4];
    vp8x.extend_from_slice(&(side - 1).to_le_bytes()[..3]);
    vp8x.extend_from_slice(&(side - 1).to_le_bytes()[..3]);
    let mut webp = b"RIFF".to_vec();
    webp.extend_from_slice(&(4 + 8 + vp8x.len() as u32).to_le_bytes());
    webp.extend_from_slice(b"WEBPVP8X");
    webp.extend_from_slice(&(vp8x.len() as u32).to_le_bytes());
    webp.extend_from_slice(&vp8x);
    for (class, bytes) in [("png", png), ("jpg", jpeg), ("webp", webp)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for copy in ["a", "b", "c"] {
            let name = format!("{copy}.{class}");
            std::fs::write(data.join(class).join(name), &bytes).unwrap();
        }
    }
    std::fs::create_dir_all(data.join("gif")).unwrap();
    let file = File::create(data.join("gif/frames.gif")).unwrap();
    let mut gif = image::codecs::gif::GifEncoder::new(file);
    let frame = image::RgbaImage::from_pixel(4, 4, image::Rgba([200, 30, 30, 255]));
    let frames = (0..10_000).map(|_| image::Frame::new(frame.clone()));
    gif.encode_frames(frames).unwrap();
    drop(gif);
    for copy in ["b", "c"] {
        std::fs::copy(
            data.join("gif/frames.gif"),
            data.join(format!("gif/{copy}.gif")),
        )
        .unwrap();
    }
}

#[test]
fn image_bombs_are_refused_from_their_headers() {
    let tmp = tempfile::tempdir().unwrap();
    write_bombs(&tmp.path().join("data"));
    let started = Instant::now();
    let (code, stderr, peak) = measured(
        tmp.path(),
        &["datasets", "--folder", "data", "--decode", "--verbose"],
    );
    check_bounded("image bombs (datasets --decode)", started, peak);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("problem(s) found"), "{stderr}");
    // The three declared giants are named; the GIF's first frame decodes.
    let out = Command::new(env!("CARGO_BIN_EXE_clip-adapter"))
        .args([
            "datasets",
            "--folder",
            "data",
            "--decode",
            "--verbose",
            "--json",
        ])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let unreadable = reports[0]["unreadable"].as_array().unwrap();
    let names: Vec<&str> = unreadable
        .iter()
        .map(|u| u["impath"].as_str().unwrap())
        .collect();
    assert_eq!(unreadable.len(), 9, "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".gif")), "{names:?}");
    for u in unreadable {
        let (path, reason) = (u["impath"].as_str().unwrap(), u["reason"].as_str().unwrap());
        // PNG and JPEG are refused from the size their header declares; the image crate refuses
        // this WebP's missing bitstream chunk before it reads a size.
        if !path.ends_with(".webp") {
            assert!(reason.contains("65535x65535"), "{reason}");
        }
    }
}

/// A sparse file of 2 GiB: no disk used, and no reader may take it whole.
fn sparse(path: &Path) {
    File::create(path).unwrap().set_len(2 << 30).unwrap();
}

#[test]
fn list_files_of_2_gib_are_refused_before_they_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("results")).unwrap();
    sparse(&tmp.path().join("results/results.csv"));
    sparse(&tmp.path().join("split.json"));
    sparse(&tmp.path().join("manifest.csv"));
    for (what, args) in [
        ("results.csv (report)", &["report", "results"][..]),
        (
            "split file (datasets)",
            &["datasets", "--split", "split.json"][..],
        ),
        (
            "manifest (datasets)",
            &["datasets", "--manifest", "manifest.csv"][..],
        ),
    ] {
        let started = Instant::now();
        let (code, stderr, peak) = measured(tmp.path(), args);
        check_bounded(what, started, peak);
        assert_eq!(code, 1, "{what}: {stderr}");
        assert!(
            stderr.contains("file size = 2147483648 is above the limit of 1073741824"),
            "{what}: {stderr}"
        );
    }
}
