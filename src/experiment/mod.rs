//! The experiment: what `clip-adapter run`, `fit` and the demo share.
//!
//! ```text
//! base_to_new.rs  CoCoOp's base-to-new protocol: the class split, the base task, the new
//!              classes' test
//! row.rs       one results row (CSV via serde), its identity, the results file and resume
//! protocol.rs  the options a user sets, which methods they apply to, the protocol's rules
//!              (per-dataset Tip-Adapter values, ImageNet's 50 epochs), with or without a
//!              validation set; the four protocols (`Protocol`) and the methods each admits
//! grid.rs      methods × datasets × shots × seeds, one draw loaded once for all methods
//! table.rs     mean ± std Markdown tables per dataset and averaged over datasets, with the
//!              published numbers of the run's backbone beside ours
//! sweep.rs     the paper's ablations: CLIP-Adapter over bottleneck widths or fixed ratios α
//! transfer.rs  cross-dataset transfer and domain generalisation: one head, tested on other
//!              datasets
//! shard.rs     a grid spread over machines: each cell's cost, the shards' cost-balanced
//!              share, the files a shard writes
//! join.rs      the shards' rows joined into the results.csv one run would have written
//! model.rs     the backbone of a model from its config; the model a saved head records
//! ```
//!
//! A row's identity is everything that produced it: method and options, dataset, shots, seed,
//! the fingerprint of the model whose features it used and the identity of those features. A
//! rerun skips a row only when all of these agree, so results of another model or another
//! extraction are never mistaken for this one's.

pub mod base_to_new;
mod error;
mod fit_pool;
pub mod grid;
pub mod join;
pub mod model;
pub mod protocol;
pub mod row;
pub mod shard;
pub mod sweep;
pub mod table;
pub mod transfer;

pub use base_to_new::BaseToNew;
pub use error::{ExperimentError, NotApplicableTo};
pub use grid::{
    fit_row, run_grid, FitInputs, Grid, GridEvent, GridIo, GridMethod, GridOutcome, ImagesLoader,
    ModelLoader, RowSink, RowSpec, TrainedOn,
};
pub use model::{backbone, check_head_model, model_reference, prompt_model};
pub use protocol::{MethodOverrides, Protocol, Validation};
pub use row::{ResultRow, ResultsFile, RowKey, RowSource};
pub use table::{Published, Summary};
