//! The demo: the paper's whole protocol, offline, on the embedded world model.
//!
//! ```text
//! model.rs    the embedded model (tiny-world-clip), materialised in the temp dir
//! run.rs      the world's tasks in CoOp's layout, encoded once; CoOp's K-shot draws; every
//!             method fitted by the experiment's grid
//! report.rs   the experiment's tables with the close/far grouping, the chosen α, the plot
//!             (report/plot.rs, its renderer, is private to the report)
//! ```

mod model;
mod report;
mod run;

pub use model::{embedded_model_dir, EMBEDDED_MODEL};
pub use report::{method_style, Colour, DemoReport, Figure, PANEL_H, PANEL_W};
pub use run::{
    all_methods, demo_coop, run_demo, task_names, DemoError, DemoEvent, DemoMethod, DemoOptions,
    ALPHAS, DEMO_COOP_EPOCHS, DEMO_COOP_N_CTX,
};
