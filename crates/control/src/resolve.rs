//! Resolving a target's DNS discovery into instance URLs, with what the answer means for the
//! instance set: records (replace it), an authoritative empty answer (empty it, once confirmed)
//! or a failure (keep it).

use std::net::IpAddr;
use std::time::Duration;

use caracal_store::discovery::{DnsDiscovery, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType as Wire};

use crate::config::ControlConfig;

/// What one resolution found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records: the instance URLs (sorted, distinct) and the lowest TTL among them.
    Records {
        /// Instance base URLs.
        urls: Vec<String>,
        /// The lowest record TTL.
        ttl: Option<Duration>,
    },
    /// The server answered that there is nothing: `NXDOMAIN` (`nxdomain`) or no records of
    /// that type. The set empties only when this is seen twice in a row.
    Empty {
        /// Whether the name does not exist at all.
        nxdomain: bool,
    },
    /// No usable answer (the last known set stays): `timeout`, `servfail`, `refused`,
    /// `unreachable` or `error`, with the resolver's words.
    Failed {
        /// A stable word, the `reason` label of `caracal_control_discovery_failures_total`.
        reason: &'static str,
        /// The resolver's own description.
        detail: String,
    },
}

impl Answer {
    /// The stored outcome word.
    pub fn outcome(&self) -> &'static str {
        match self {
            Answer::Records { .. } => "ok",
            Answer::Empty { nxdomain: true } => "nxdomain",
            Answer::Empty { nxdomain: false } => "empty",
            Answer::Failed { reason, .. } => reason,
        }
    }
}

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the system's DNS configuration (/etc/resolv.conf); set control.nameservers")]
pub struct NoResolver(#[source] NetError);

/// A stub resolver with no cache of its own: every refresh asks the nameservers, so a changed
/// record shows at the next refresh (which already follows the records' TTL).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// The configured nameservers, or the system's.
    ///
    /// # Errors
    /// [`NoResolver`] when no nameservers are configured and the system's cannot be read.
    pub fn new(config: &ControlConfig) -> Result<Self, NoResolver> {
        let mut builder = if config.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(NoResolver)?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.cache_size = 0;
        options.timeout = config.resolve_timeout;
        options.attempts = 1;
        options.use_hosts_file = ResolveHosts::Never;
        let inner = builder.build().map_err(NoResolver)?;
        Ok(Self { inner })
    }

    /// Resolves `dns` into instance URLs.
    pub async fn resolve(&self, dns: &DnsDiscovery) -> Answer {
        let wire = match dns.record_type {
            RecordType::A => Wire::A,
            RecordType::Aaaa => Wire::AAAA,
            RecordType::Srv => Wire::SRV,
        };
        match self.inner.lookup(dns.name.as_str(), wire).await {
            Ok(lookup) => {
                let mut urls = Vec::new();
                let mut ttl: Option<u32> = None;
                for record in lookup.answers() {
                    let url = match (&record.data, dns.port) {
                        (RData::A(a), Some(port)) => url(&dns.scheme, IpAddr::V4(a.0), port),
                        (RData::AAAA(a), Some(port)) => url(&dns.scheme, IpAddr::V6(a.0), port),
                        (RData::SRV(srv), _) => {
                            let host = srv.target.to_utf8();
                            format!("{}://{}:{}", dns.scheme, host.trim_end_matches('.'), srv.port)
                        }
                        // A CNAME on the way, or a type we did not ask for.
                        _ => continue,
                    };
                    if !caracal_store::discovery::valid_url(&url) {
                        // An SRV target no HTTP client could use (escaped bytes, say).
                        tracing::warn!(%url, name = %dns.name, "skipping a record that is not a usable instance");
                        continue;
                    }
                    ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
                    urls.push(url);
                }
                urls.sort();
                urls.dedup();
                if urls.is_empty() {
                    return Answer::Empty { nxdomain: false };
                }
                Answer::Records { urls, ttl: ttl.map(|t| Duration::from_secs(u64::from(t))) }
            }
            Err(e) => classify(e),
        }
    }
}

fn url(scheme: &str, ip: IpAddr, port: u32) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{scheme}://{ip}:{port}"),
        IpAddr::V6(ip) => format!("{scheme}://[{ip}]:{port}"),
    }
}

/// What a resolver error means: an authoritative "nothing" or a failure, with its reason.
fn classify(error: NetError) -> Answer {
    let reason = match &error {
        NetError::Dns(DnsError::NoRecordsFound(none)) => {
            return Answer::Empty { nxdomain: none.response_code == ResponseCode::NXDomain };
        }
        NetError::Timeout => "timeout",
        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => "servfail",
        NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused)) => "refused",
        NetError::Io(_) | NetError::NoConnections => "unreachable",
        _ => "error",
    };
    Answer::Failed { reason, detail: error.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_bracket_ipv6_hosts() {
        assert_eq!(url("http", "127.0.0.2".parse().expect("ip"), 80), "http://127.0.0.2:80");
        assert_eq!(url("http", "::1".parse().expect("ip"), 8080), "http://[::1]:8080");
    }

    #[test]
    fn failures_keep_their_reason_and_empties_are_not_failures() {
        assert_eq!(classify(NetError::Timeout).outcome(), "timeout");
        assert_eq!(classify(NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))).outcome(), "servfail");
        assert_eq!(classify(NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused))).outcome(), "refused");
        let query = hickory_resolver::proto::op::Query::new();
        let nx = hickory_resolver::net::NoRecords::new(query.clone(), ResponseCode::NXDomain);
        assert_eq!(classify(NetError::Dns(DnsError::NoRecordsFound(nx))), Answer::Empty { nxdomain: true });
        let none = hickory_resolver::net::NoRecords::new(query, ResponseCode::NoError);
        assert_eq!(classify(NetError::Dns(DnsError::NoRecordsFound(none))), Answer::Empty { nxdomain: false });
    }
}
