//! libjpeg-turbo's SIMD and portable C code decode every JPEG fixture to the same bytes.
//!
//! The library may be built with its x86-64 SIMD routines (NASM present) or without (C only);
//! `preprocess.rs` checks either build against PIL. This proves the two code paths agree inside
//! one build: libjpeg-turbo reads `JSIMD_FORCENONE=1` (C code only) and `JSIMD_FORCESSE2=1` (SSE2,
//! no AVX2) once per thread from the environment (`simd/x86_64/jsimd.c`, `init_simd`), so each
//! setting runs in a child process: this test binary again, running only [`jpeg_decode_dump`],
//! which writes the decoded RGB of every fixture to a folder. The folders must be identical,
//! byte for byte. In a C-only build all three runs take the C path and agree trivially.

use std::path::{Path, PathBuf};
use std::process::Command;

use clip_adapter::image::decode_file;

/// Set for the child: the folder `jpeg_decode_dump` writes into.
const DUMP_DIR_ENV: &str = "CLIP_ADAPTER_TEST_JPEG_DUMP_DIR";
/// libjpeg-turbo's run-time SIMD switches (x86-64).
const SIMD_ENV: [&str; 3] = ["JSIMD_FORCENONE", "JSIMD_FORCESSE2", "JSIMD_FORCEAVX2"];

/// The JPEG fixtures PIL decodes (`tests/fixtures/images/good/*.jpg`), sorted.
fn jpeg_fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/good");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("reading the fixture folder").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 7,
        "expected the 7 JPEG fixtures in {}, found {}",
        dir.display(),
        files.len()
    );
    files
}

/// Runs [`jpeg_decode_dump`] in a child process with `simd_env` (one of [`SIMD_ENV`] set to 1,
/// or none) and returns the decoded bytes per fixture.
fn decode_in_child(simd_env: Option<&str>) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        "preprocess_jpeg_simd::jpeg_decode_dump",
        "--exact",
        "--ignored",
        "--test-threads=1",
    ])
    .env(DUMP_DIR_ENV, dir.path());
    for var in SIMD_ENV {
        cmd.env_remove(var);
    }
    if let Some(var) = simd_env {
        cmd.env(var, "1");
    }
    let out = cmd.output().expect("running the test binary again");
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && log.contains("1 passed"),
        "child with {simd_env:?} failed ({}):\n{log}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    jpeg_fixtures()
        .into_iter()
        .map(|f| {
            let dumped = dir.path().join(dump_name(&f));
            let bytes = std::fs::read(&dumped)
                .unwrap_or_else(|e| panic!("child wrote no {}: {e}", dumped.display()));
            (f, bytes)
        })
        .collect()
}

fn dump_name(fixture: &Path) -> String {
    let name = fixture.file_name().expect("a file").to_string_lossy();
    format!("{name}.rgb")
}

#[test]
fn simd_and_portable_c_decode_jpegs_to_the_same_bytes() {
    let default = decode_in_child(None);
    let mut compared = 0;
    for forced in ["JSIMD_FORCENONE", "JSIMD_FORCESSE2"] {
        let other = decode_in_child(Some(forced));
        for ((file, a), (_, b)) in default.iter().zip(&other) {
            let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert!(
                a.len() == b.len() && differing == 0,
                "{}: {forced}=1 decodes differently ({} vs {} bytes, {differing} differ)",
                file.display(),
                b.len(),
                a.len()
            );
            compared += a.len();
        }
    }
    // The children decoded what this process decodes (and `preprocess.rs` compares that to PIL).
    for (file, bytes) in &default {
        let here = decode_file(file).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            here.as_raw() == bytes.as_slice(),
            "{}: the child's bytes differ from this process's",
            file.display()
        );
    }
    println!(
        "{} JPEG fixtures, {compared} bytes compared; SIMD built: {}",
        default.len(),
        libjpeg_turbo_sys::SIMD
    );
}

/// The child of [`simd_and_portable_c_decode_jpegs_to_the_same_bytes`]: decodes every JPEG
/// fixture into the folder named by `CLIP_ADAPTER_TEST_JPEG_DUMP_DIR`. Fails when run without it.
#[test]
#[ignore = "run in a child process by simd_and_portable_c_decode_jpegs_to_the_same_bytes"]
fn jpeg_decode_dump() {
    let dir = std::env::var_os(DUMP_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{DUMP_DIR_ENV} is not set: this test is run by another"));
    for f in jpeg_fixtures() {
        let img = decode_file(&f).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join(dump_name(&f)), img.as_raw())
            .unwrap_or_else(|e| panic!("writing into {}: {e}", dir.display()));
    }
}
