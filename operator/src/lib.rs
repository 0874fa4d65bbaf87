//! specdec operator: reconciles `SpeculativeDeployment` resources into the
//! ConfigMap, Deployment, Service, PodDisruptionBudget and ServiceMonitor
//! that serve a target model with its drafters.
//!
//! - [`crd`]: the custom resource and its schema rules.
//! - [`model_source`], [`plan`]: validation, pure.
//! - [`build`]: the Kubernetes objects, pure.
//! - [`status`], [`acceptance`]: the published status, pure.
//! - [`controller`]: dereference, apply, status (talks to the API server);
//!   [`applied`]: which children need writing at all.
//! - [`leader`]: Lease-based leader election.
//! - [`metrics`], [`http`], [`telemetry`], [`cli`]: the process around it.

pub mod acceptance;
pub mod applied;
pub mod build;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod model_source;
pub mod plan;
pub mod status;
pub mod telemetry;
