//! [`ApiState`], what every handler shares: the ground floor of the crate. It holds values of
//! the modules below the handlers (the platform and monitoring views, the status page's feed
//! and sessions) and imports nothing above it, so the handlers' modules import it downwards
//! and never reach back up to `lib.rs`.

use std::sync::Arc;

use caracal_core::{Mode, Readiness};
use caracal_tokens::Access;

use crate::page;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The registry's database.
    pub pool: sqlx::PgPool,
    /// Who may call `/v1/*`: the admin token, or an STS token with `targets:read`/`targets:write`.
    pub access: Access,
    /// The deployment mode (reads of `/v1/*` are open in `dev`).
    pub mode: Mode,
    /// The ladder's latest results, for `/healthchecks`.
    pub readiness: Readiness,
    /// The latest known status of the platform's own services.
    pub platform: Arc<crate::platform::PlatformView>,
    /// The latest read of Alertmanager and Prometheus.
    pub monitoring: Arc<crate::monitoring::MonitoringView>,
    /// Settings.
    pub config: Arc<crate::config::ApiConfig>,
    /// The outbound address policy: a registered address literal it denies is refused.
    pub outbound: Arc<caracal_core::outbound::Policy>,
    /// Where targets' client certificates may be read from (`coordinator.tls.client_dir`).
    pub client_files: Arc<caracal_store::tls::ClientFiles>,
    /// The status page's live feed.
    pub(crate) feed: Arc<page::live::Feed>,
    /// The status page's sign-in sessions.
    pub(crate) sessions: Arc<page::session::Sessions>,
    /// Draining ends the status page's open event streams.
    pub(crate) lifecycle: Arc<caracal_core::Lifecycle>,
}
