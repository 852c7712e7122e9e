//! The generated world: deterministic per seed, captions that say what is drawn, held-out
//! values never in pretraining, and tasks in CoOp's layout that the real loader reads.

use clip_adapter::data::{FewShot, Split};
use clip_adapter::world::tasks::{demo_tasks, load_task, write_task, Gap, TaskSizes};
use clip_adapter::world::{self, Domain, Shape, Style, Texture};

#[test]
fn pairs_are_deterministic_per_seed_and_index() {
    let d = Domain::pretraining();
    let a = world::pair(&d, 7, 42);
    let b = world::pair(&d, 7, 42);
    assert_eq!(a.image.as_raw(), b.image.as_raw());
    assert_eq!(a.caption, b.caption);
    let c = world::pair(&d, 8, 42);
    assert_ne!(a.image.as_raw(), c.image.as_raw());
    assert_eq!(
        (a.image.width(), a.image.height()),
        (world::IMAGE_SIDE, world::IMAGE_SIDE)
    );
}

#[test]
fn captions_name_only_attributes_of_the_scene() {
    let d = Domain::pretraining();
    for i in 0..500 {
        let p = world::pair(&d, 1, i);
        let words: Vec<&str> = p.caption.trim_end_matches('.').split(' ').collect();
        for w in &words {
            if let Some(s) = Shape::ALL
                .iter()
                .find(|s| s.word() == *w || s.plural() == *w)
            {
                assert_eq!(*s, p.scene.shape, "{}", p.caption);
            }
            if let Some(t) = Texture::from_word(w) {
                assert_eq!(t, p.scene.texture, "{}", p.caption);
            }
        }
        assert!(
            words.contains(&p.scene.shape.word())
                || words.contains(&p.scene.shape.plural().as_str())
                || words.iter().any(|w| w.starts_with("shape")),
            "{}",
            p.caption
        );
    }
}

#[test]
fn pretraining_never_draws_held_out_values() {
    let d = Domain::pretraining();
    for i in 0..300 {
        let s = world::pair(&d, 3, i).scene;
        assert!(s.shape.in_pretraining() && s.texture.in_pretraining() && s.style.in_pretraining());
        assert_ne!(s.style, Style::Sketch);
    }
}

#[test]
fn tasks_are_written_in_coop_layout_and_sampled_by_the_real_sampler() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = demo_tasks();
    assert!(tasks.iter().any(|t| t.gap == Gap::Close) && tasks.iter().any(|t| t.gap == Gap::Far));
    let spec = tasks.iter().find(|t| t.name == "new_shapes").unwrap();
    assert!(spec
        .classes
        .iter()
        .all(|(c, _)| Shape::from_word(c).is_some_and(|s| !s.in_pretraining())));
    let sizes = TaskSizes {
        train: 5,
        val: 2,
        test: 3,
    };
    let split = write_task(spec, dir.path(), 1, sizes).unwrap();
    let again = std::fs::read(&split).unwrap();
    let d = load_task(&split, spec.name).unwrap();
    assert_eq!(d.classnames.len(), spec.classes.len());
    assert_eq!(d.train.len(), 5 * spec.classes.len());
    for s in d.split(Split::Test) {
        assert!(d.path(s).is_file(), "{}", s.impath);
    }
    let draw = FewShot::coop(&d, 4, 1).unwrap();
    assert_eq!(draw.train.len(), 4 * spec.classes.len());
    // Rewriting gives the same split file (and images).
    write_task(spec, dir.path(), 1, sizes).unwrap();
    assert_eq!(std::fs::read(&split).unwrap(), again);
}
