//! The demo: the paper's whole protocol, offline, on the embedded world model.
//!
//! ```text
//! model.rs    the embedded model (tiny-world-clip), materialised in the temp dir
//! run.rs      the world's tasks in CoOp's layout, encoded once; CoOp's K-shot draws; every
//!             method fitted by the experiment's grid
//! report.rs   the close/far grouping of the tasks and the chosen α, for the report every
//!             results folder gets (`crate::report`)
//! ```

mod model;
mod report;
mod run;

pub use model::{embedded_model_dir, materialize_embedded_model, EMBEDDED_MODEL};
pub use report::DemoReport;
pub use run::{
    ablation_methods, all_methods, demo_coop, run_demo, task_names, DemoError, DemoEvent,
    DemoMethod, DemoOptions, ALPHAS, DEMO_COOP_EPOCHS, DEMO_COOP_N_CTX,
};
