//! Remote runners: processes started with `DAYTONA_ROLES=runner` that register with this API,
//! report their health and take work as jobs. [`Fleet`] is the API's [`daytona_runner::SandboxRunner`]
//! when it runs without a runner of its own.

mod fleet;
pub mod jobs;
pub mod routes;
pub mod score;

pub use fleet::{Fleet, FleetSettings, RemoteRunner};
