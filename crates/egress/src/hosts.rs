//! A secret's allowed hosts: `api.example.com` (that host only), `*.example.com` (any host
//! below `example.com`, not `example.com` itself) or an IPv4 address. No ports, schemes or
//! paths; names compare case-insensitively.

use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.suffix`: holds the suffix.
    Subdomains(String),
    Address(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{entry}' {reason}")]
pub struct InvalidHost {
    pub entry: String,
    pub reason: &'static str,
}

fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl HostPattern {
    pub fn parse(entry: &str) -> Result<Self, InvalidHost> {
        let invalid = |reason| InvalidHost {
            entry: entry.to_owned(),
            reason,
        };
        let host = entry.trim().to_ascii_lowercase();
        if host.is_empty() {
            return Err(invalid("is empty"));
        }
        if host.contains("://") || host.contains('/') {
            return Err(invalid("must be a host name, without scheme or path"));
        }
        if host.contains(':') {
            return Err(invalid("must not have a port (ports are not supported)"));
        }
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(HostPattern::Address(ip));
        }
        if let Some(suffix) = host.strip_prefix("*.") {
            return if is_dns_name(suffix) && !suffix.contains('*') {
                Ok(HostPattern::Subdomains(suffix.to_owned()))
            } else {
                Err(invalid(
                    "is not a valid '*.' wildcard such as *.example.com",
                ))
            };
        }
        if host.contains('*') {
            return Err(invalid(
                "may only use '*' as its first label, such as *.example.com",
            ));
        }
        if !is_dns_name(&host) {
            return Err(invalid(
                "is not a valid host name (letters, digits, '-' and '.' only)",
            ));
        }
        Ok(HostPattern::Exact(host))
    }

    /// Whether a request's `host` (a name or an address, any case) matches.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        match self {
            HostPattern::Exact(name) => host == *name,
            HostPattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            HostPattern::Address(ip) => host.parse::<Ipv4Addr>().is_ok_and(|h| h == *ip),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Subdomains(suffix) => write!(f, "*.{suffix}"),
            HostPattern::Address(ip) => write!(f, "{ip}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_wildcards_and_addresses() {
        assert_eq!(
            HostPattern::parse("API.Example.com").unwrap().to_string(),
            "api.example.com"
        );
        assert_eq!(
            HostPattern::parse("*.example.com").unwrap(),
            HostPattern::Subdomains("example.com".into())
        );
        assert_eq!(
            HostPattern::parse("100.64.0.1").unwrap(),
            HostPattern::Address(Ipv4Addr::new(100, 64, 0, 1))
        );
        for bad in [
            "",
            "https://a.com",
            "a.com:443",
            "a.com/x",
            "*",
            "a.*.com",
            "*.-a.com",
            "a b",
            "a..com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.matches("api.example.com"));
        assert!(p.matches("a.b.EXAMPLE.com."));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        let exact = HostPattern::parse("api.example.com").unwrap();
        assert!(exact.matches("API.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        let ip = HostPattern::parse("100.64.0.1").unwrap();
        assert!(ip.matches("100.64.0.1"));
        assert!(!ip.matches("100.64.0.10"));
    }
}
