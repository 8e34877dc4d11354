//! caracal-control's integration tests: DNS discovery against a real `dnsmasq`, declared files
//! reconciled into a real PostgreSQL, and the service's ladder.

mod declared;
mod discovery;
mod support;
