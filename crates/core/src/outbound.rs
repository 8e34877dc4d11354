//! Outbound is a policy, not a call site: every connection a service opens to a target (a
//! probe, a scrape) goes through one [`Policy`], which checks the address it is about to
//! connect to — after DNS, so a name that resolves (or rebinds) to a denied address is caught —
//! and hands back only the addresses it checked, so the connection goes where the check said.
//!
//! Defaults deny what a target URL has no business reaching: link-local (`169.254.0.0/16`,
//! where cloud metadata lives, and `fe80::/10`), `0.0.0.0/8` and `::`, multicast and the
//! broadcast address. Loopback and private ranges stay allowed (`caracal up` and clusters
//! need them); an operator closes them with `outbound.deny` (see `docs/security.md`).

use std::net::{IpAddr, SocketAddr};

/// An address range (`10.0.0.0/8`, `fe80::/10`), as the policy's lists hold them.
pub use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The `[outbound]` settings (`CARACAL_OUTBOUND__ALLOW`, `CARACAL_OUTBOUND__DENY`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// When not empty, only addresses inside one of these ranges may be contacted.
    pub allow: Vec<IpNet>,
    /// Addresses inside these ranges are never contacted, whatever `allow` says.
    pub deny: Vec<IpNet>,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self { allow: Vec::new(), deny: default_deny() }
    }
}

/// The ranges denied by default.
pub fn default_deny() -> Vec<IpNet> {
    ["169.254.0.0/16", "fe80::/10", "0.0.0.0/8", "::/128", "224.0.0.0/4", "ff00::/8", "255.255.255.255/32"]
        .iter()
        .map(|net| net.parse().unwrap_or_else(|e| unreachable!("a constant range {net}: {e}")))
        .collect()
}

/// Why a connection was not made: the stable word is `address_denied`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The address (or one the name resolved to) is outside the policy.
    #[error("address_denied")]
    Denied(IpAddr),
    /// The host is a number written other than as a dotted quad (`2852039166`, `0x7f.1`):
    /// resolvers read such forms differently, so none is used.
    #[error("address_denied")]
    NumericForm,
    /// The name did not resolve.
    #[error("dns_not_found")]
    NotFound,
}

impl Refused {
    /// The stable word a probe or a scrape reports.
    pub fn word(&self) -> &'static str {
        match self {
            Refused::Denied(_) | Refused::NumericForm => "address_denied",
            Refused::NotFound => "dns_not_found",
        }
    }
}

/// The address policy every outbound connection to a target goes through.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    config: OutboundConfig,
}

impl Policy {
    /// The policy `config` describes.
    pub fn new(config: OutboundConfig) -> Self {
        Self { config }
    }

    /// Whether `address` may be contacted. An IPv4 address written as IPv6
    /// (`::ffff:169.254.169.254`) is judged as the IPv4 address it is.
    pub fn permits(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        let inside = |nets: &[IpNet]| nets.iter().any(|net| net.contains(&address));
        (self.config.allow.is_empty() || inside(&self.config.allow)) && !inside(&self.config.deny)
    }

    /// Judges a host as written in a URL, without resolving it: `Ok(Some(ip))` for an address
    /// literal the policy permits, `Ok(None)` for a name (judged when it is resolved).
    ///
    /// # Errors
    /// [`Refused`] for a denied literal or a numeric form other than a dotted quad.
    pub fn check_host(&self, host: &str) -> Result<Option<IpAddr>, Refused> {
        match literal(host)? {
            Some(ip) if self.permits(ip) => Ok(Some(ip)),
            Some(ip) => Err(Refused::Denied(ip)),
            None => Ok(None),
        }
    }

    /// The addresses to connect to for `host:port`: the literal itself, or every address the
    /// name resolves to — all of them permitted, else none (a name with one denied answer is
    /// refused whole: an attacker's name would otherwise pick which answer is used).
    ///
    /// # Errors
    /// [`Refused`]: denied, a numeric form, or no answer.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refused> {
        if let Some(ip) = self.check_host(host)? {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let answers: Vec<SocketAddr> =
            tokio::net::lookup_host((host, port)).await.map_err(|_| Refused::NotFound)?.collect();
        if answers.is_empty() {
            return Err(Refused::NotFound);
        }
        if let Some(denied) = answers.iter().find(|a| !self.permits(a.ip())) {
            return Err(Refused::Denied(denied.ip()));
        }
        Ok(answers)
    }

    /// Opens a TCP connection to `host:port` through [`resolve`](Self::resolve), trying the
    /// checked addresses in order.
    ///
    /// # Errors
    /// [`Refused`] as an [`std::io::Error`] (find it with [`refused_in`]), or the last
    /// connection error.
    pub async fn connect(&self, host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let addresses = self.resolve(host, port).await.map_err(std::io::Error::other)?;
        let mut last = None;
        for address in addresses {
            match tokio::net::TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other(Refused::NotFound)))
    }

    /// A resolver for `reqwest`'s client that applies the policy to every name. `reqwest`
    /// connects to an address literal without asking a resolver, so a caller checks literals
    /// with [`check_host`](Self::check_host) before sending.
    pub fn resolver(&self) -> std::sync::Arc<Resolver> {
        std::sync::Arc::new(Resolver { policy: self.clone() })
    }
}

/// `reqwest`'s DNS resolver under the policy (see [`Policy::resolver`]).
#[derive(Debug)]
pub struct Resolver {
    policy: Policy,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses = policy.resolve(&host, 0).await?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The [`Refused`] somewhere in `error`'s chain of sources, if any.
pub fn refused_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(refused) = inner.downcast_ref::<Refused>()
        {
            return Some(refused);
        }
        next = e.source();
    }
    None
}

/// The host of a URL (`scheme://host[:port][/...]`), brackets of an IPv6 literal removed.
pub fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(host, _)| host);
    }
    Some(authority.rsplit_once(':').map_or(authority, |(host, _)| host))
}

/// An address literal `host` stands for: a dotted quad or an IPv6 address; `None` for a name.
///
/// # Errors
/// [`Refused::NumericForm`] for a host whose last label starts with a digit although it is not
/// a dotted quad: URL parsers and `inet_aton` read such hosts as IPv4 addresses (`2852039166`,
/// `127.1`, `0x7f.0.0.1`, `0177.0.0.1`), and no top-level name starts with a digit.
pub fn literal(host: &str) -> Result<Option<IpAddr>, Refused> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Some(ip));
    }
    let last = host.strip_suffix('.').unwrap_or(host).rsplit('.').next().unwrap_or("");
    if last.starts_with(|c: char| c.is_ascii_digit()) { Err(Refused::NumericForm) } else { Ok(None) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> Policy {
        let nets = |list: &[&str]| list.iter().map(|n| n.parse().expect("a range")).collect();
        Policy::new(OutboundConfig { allow: nets(allow), deny: nets(deny) })
    }

    #[test]
    fn the_defaults_deny_link_local_unspecified_multicast_and_broadcast_only() {
        let p = Policy::default();
        for denied in ["169.254.169.254", "fe80::1", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            assert!(!p.permits(denied.parse().expect("ip")), "{denied}");
        }
        for allowed in ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "172.16.0.1", "8.8.8.8", "2001:db8::1"] {
            assert!(p.permits(allowed.parse().expect("ip")), "{allowed}");
        }
        assert!(!p.permits("::ffff:169.254.169.254".parse().expect("ip")), "mapped IPv4 is judged as IPv4");
    }

    #[test]
    fn allow_narrows_and_deny_wins() {
        let p = policy(&["10.0.0.0/8"], &["10.9.0.0/16"]);
        assert!(p.permits("10.1.0.1".parse().expect("ip")));
        assert!(!p.permits("10.9.0.1".parse().expect("ip")), "deny wins inside allow");
        assert!(!p.permits("127.0.0.1".parse().expect("ip")), "outside allow");
        let closed = policy(&[], &["127.0.0.0/8", "::1/128"]);
        assert!(!closed.permits("127.0.0.2".parse().expect("ip")));
    }

    #[test]
    fn numeric_forms_other_than_dotted_quads_are_refused() {
        for form in ["2852039166", "127.1", "0x7f.0.0.1", "0177.0.0.1", "0x7f000001", "1.2.3.4."] {
            assert_eq!(literal(form), Err(Refused::NumericForm), "{form}");
        }
        assert_eq!(literal("169.254.169.254"), Ok(Some("169.254.169.254".parse().expect("ip"))));
        assert_eq!(literal("[::1]"), Ok(Some("::1".parse().expect("ip"))));
        assert_eq!(literal("x.0a"), Err(Refused::NumericForm), "a last label starting with a digit");
        for name in ["shop.test", "a1", "0a.x", "api-2.internal", "localhost", "svc.cluster.local."] {
            assert_eq!(literal(name), Ok(None), "{name}");
        }
        assert_eq!(
            Policy::default().check_host("169.254.169.254"),
            Err(Refused::Denied("169.254.169.254".parse().expect("ip")))
        );
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(host_of("http://169.254.169.254/latest"), Some("169.254.169.254"));
        assert_eq!(host_of("grpcs://[::1]:50051"), Some("::1"));
        assert_eq!(host_of("https://user@shop.test:8443/x"), Some("shop.test"));
        assert_eq!(host_of("tcp://db:5432"), Some("db"));
        assert_eq!(host_of("nope"), None);
    }

    #[tokio::test]
    async fn a_name_is_judged_by_what_it_resolves_to() {
        let open = Policy::default();
        let found = open.resolve("localhost", 80).await.expect("localhost resolves");
        assert!(found.iter().all(|a| a.ip().is_loopback() && a.port() == 80));
        let closed = policy(&[], &["127.0.0.0/8", "::1/128"]);
        assert!(matches!(closed.resolve("localhost", 80).await, Err(Refused::Denied(_))));
        let error = closed.connect("localhost", 80).await.expect_err("refused");
        assert_eq!(refused_in(&error).map(Refused::word), Some("address_denied"));
    }
}
