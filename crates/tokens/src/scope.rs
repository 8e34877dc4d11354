//! The scopes a `/v1` route can ask for.

use std::fmt;

/// One scope. A token carries a space-separated list of them; a route asks for exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Read the targets registry and status (`GET /v1/targets`, `/v1/status`).
    TargetsRead,
    /// Change the targets registry.
    TargetsWrite,
    /// Read the audit ledger (`GET /v1/events`).
    EventsRead,
    /// Read federated metrics through the gateway.
    MetricsRead,
    /// Manage the STS's clients.
    ClientsWrite,
    /// Register targets whose certificates are not verified (`tls.insecure_skip_verify`).
    TargetsAdmin,
    /// Introspect other clients' tokens at the STS (a client may always introspect its own).
    TokensIntrospect,
}

impl Scope {
    /// Every scope, in a stable order.
    pub const ALL: [Scope; 7] = [
        Scope::TargetsRead,
        Scope::TargetsWrite,
        Scope::EventsRead,
        Scope::MetricsRead,
        Scope::ClientsWrite,
        Scope::TargetsAdmin,
        Scope::TokensIntrospect,
    ];

    /// The scope as written in tokens (`targets:read`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::TargetsRead => "targets:read",
            Scope::TargetsWrite => "targets:write",
            Scope::EventsRead => "events:read",
            Scope::MetricsRead => "metrics:read",
            Scope::ClientsWrite => "clients:write",
            Scope::TargetsAdmin => "targets:admin",
            Scope::TokensIntrospect => "tokens:introspect",
        }
    }

    /// The scope named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the space-separated `scopes` of a token include this one.
    pub fn granted_by(self, scopes: &str) -> bool {
        scopes.split(' ').any(|s| s == self.as_str())
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Scope;

    #[test]
    fn scopes_round_trip_and_match_whole_words() {
        for scope in Scope::ALL {
            assert_eq!(Scope::parse(scope.as_str()), Some(scope));
        }
        assert_eq!(Scope::parse("targets:root"), None);
        assert!(Scope::TargetsRead.granted_by("events:read targets:read"));
        assert!(!Scope::TargetsRead.granted_by("targets:reader"), "a prefix is not a scope");
        assert!(!Scope::TargetsRead.granted_by(""));
    }
}
