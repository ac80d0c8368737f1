//! The control plane: [`pipeline`] joins the stages and drains them,
//! [`reload`] applies changed plugin files and pipeline.toml while they run,
//! [`api`] serves health, metrics, queries and the dashboard, and
//! [`dead_letters`] lists and replays what the stages refused.

pub mod api;
pub mod dead_letters;
pub mod pipeline;
pub mod reload;
pub mod supervise;
pub mod writers;
