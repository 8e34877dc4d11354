//! caracal-coordinator's integration tests: replicas sharing a fleet, transitions with
//! hysteresis, gray failure (degraded), HTTPS, TCP and gRPC probes, the relay's failure modes and the service's ladder, on real PostgreSQL, Redis
//! and HTTP.

mod gray;
mod invalidations;
mod ladder;
mod outbound;
mod relay;
mod replicas;
mod support;
mod tls;
mod transitions;
