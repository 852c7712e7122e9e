//! The demo: the paper's whole protocol, offline, on the embedded world model.
//!
//! ```text
//! model.rs    the embedded model (tiny-world-clip), materialised in the temp dir
//! run.rs      the world's tasks in CoOp's layout, encoded once; CoOp's K-shot draws; every
//!             method fitted by the experiment's grid
//! tsne.rs     the paper's Fig. 5: a far task's test set as CLIP, CoOp, CLIP-Adapter with
//!             α = 1 and CLIP-Adapter score it, mapped by t-SNE
//! report.rs   the close/far grouping of the tasks and the chosen α, for the report every
//!             results folder gets (`crate::report`)
//! ```

mod model;
mod report;
mod run;
mod tsne;

pub use model::{embedded_model_dir, materialize_embedded_model, EMBEDDED_MODEL};
pub use report::DemoReport;
pub use run::{
    ablation_methods, all_methods, demo_clip_lora, demo_coop, lora_methods, run_demo, task_names,
    DemoError, DemoEvent, DemoMethod, DemoOptions, ALPHAS, BASE_TO_NEW_TASK, DEMO_COOP_CTX_INIT,
    DEMO_COOP_EPOCHS, DEMO_COOP_LR, DEMO_COOP_N_CTX, DEMO_LORA_ITERS_PER_SHOT, DEMO_LORA_LR,
    DOMAIN_METHODS, LORA_TASKS,
};
pub use tsne::{DemoTsne, ADAPTER_PANEL, CLIP_PANEL, COOP_PANEL, NO_RESIDUAL_PANEL, TSNE_TASK};
