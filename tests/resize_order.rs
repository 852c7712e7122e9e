//! Pillow's order of the two bicubic passes.
//!
//! Fixtures: tests/fixtures/resize/, written by scripts/fixtures/resize_order.py (Pillow 13.0.0;
//! see MANIFEST.json): seeded noise images and `Image.resize(size, Image.BICUBIC)` of each, on size
//! pairs either side of the rule that makes Pillow run the vertical pass first. Both passes round
//! to 8 bits, so the wrong order changes about a quarter of the bytes of these images by a few
//! levels. Tolerance: exact, every byte.

use clip_adapter::image::{decode_file, resize_bicubic};
use serde::Deserialize;

use crate::common::fixture;

#[derive(Deserialize)]
struct Case {
    source: String,
    size: [u32; 2],
    expected: String,
    note: String,
}

#[derive(Deserialize)]
struct Manifest {
    cases: Vec<Case>,
}

#[test]
fn both_pass_orders_match_pillow_exactly() {
    let manifest: Manifest =
        serde_json::from_str(&std::fs::read_to_string(fixture("resize/MANIFEST.json")).unwrap())
            .unwrap();
    // Each side of the rule, and the SigLIP squash that first showed it (40 x 64 -> 32 x 32).
    assert!(manifest.cases.len() >= 10);
    assert!(manifest
        .cases
        .iter()
        .any(|c| c.source == "noise_40x64.png" && c.size == [32, 32]));
    let mut failures = Vec::new();
    for c in &manifest.cases {
        let source = decode_file(fixture(&format!("resize/{}", c.source))).unwrap();
        let want = decode_file(fixture(&format!("resize/{}", c.expected))).unwrap();
        let got = resize_bicubic(&source, c.size[0], c.size[1]);
        assert_eq!((got.width(), got.height()), (want.width(), want.height()));
        let differ = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        println!("{} ({}): {differ} bytes differ", c.expected, c.note);
        if differ > 0 {
            failures.push(format!(
                "{} ({}): {differ} bytes differ",
                c.expected, c.note
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
