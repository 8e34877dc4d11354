//! caracal-gateway's integration tests: the gateway served in-process over real HTTP, its
//! registry in real PostgreSQL, federating real HTTP instances on loopback.

mod federation;
mod input;
mod outbound;
mod support;
