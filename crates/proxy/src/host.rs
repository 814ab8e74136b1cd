//! Which preview a `Host` names: `{port}-{sandboxIdOrSignedToken}.{PROXY_DOMAIN}`, or whatever shape
//! `PROXY_TEMPLATE_URL` gives its host with the `{{PORT}}` and `{{sandboxId}}` placeholders.

/// One piece of a host template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Port,
    Sandbox,
}

/// A host shape with placeholders, compared case-insensitively and without any `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    parts: Vec<Part>,
}

/// The preview a host names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewHost {
    pub port: u16,
    /// A sandbox id or a signed preview token.
    pub label: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostPatternError {
    #[error("'{0}' has no {{{{PORT}}}} and {{{{sandboxId}}}} placeholders in its host")]
    MissingPlaceholders(String),
}

/// `host` without a trailing `:port` (IPv6 literals are never preview hosts, so no brackets).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

impl HostPattern {
    /// The default shape: `{{PORT}}-{{sandboxId}}.{domain}`; `domain` may carry a port.
    pub fn for_domain(domain: &str) -> Self {
        let literal = format!(".{}", strip_port(domain).to_ascii_lowercase());
        HostPattern {
            parts: vec![
                Part::Port,
                Part::Literal("-".into()),
                Part::Sandbox,
                Part::Literal(literal),
            ],
        }
    }

    /// The host of a template URL such as `http://{{PORT}}-{{sandboxId}}.proxy.localhost:4000`.
    pub fn from_template(template: &str) -> Result<Self, HostPatternError> {
        let rest = template.split_once("://").map_or(template, |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let host = strip_port(authority).to_ascii_lowercase();
        let mut parts = Vec::new();
        let mut rest = host.as_str();
        let (mut port, mut sandbox) = (false, false);
        while !rest.is_empty() {
            let next = ["{{port}}", "{{sandboxid}}"]
                .iter()
                .filter_map(|p| rest.find(p).map(|i| (i, *p)))
                .min();
            match next {
                Some((i, placeholder)) => {
                    if i > 0 {
                        parts.push(Part::Literal(rest[..i].to_string()));
                    }
                    if placeholder == "{{port}}" {
                        port = true;
                        parts.push(Part::Port);
                    } else {
                        sandbox = true;
                        parts.push(Part::Sandbox);
                    }
                    rest = &rest[i + placeholder.len()..];
                }
                None => {
                    parts.push(Part::Literal(rest.to_string()));
                    rest = "";
                }
            }
        }
        if !(port && sandbox) {
            return Err(HostPatternError::MissingPlaceholders(template.to_string()));
        }
        Ok(HostPattern { parts })
    }

    /// The preview `host` names, if it has this shape.
    pub fn parse(&self, host: &str) -> Option<PreviewHost> {
        let host = strip_port(host).to_ascii_lowercase();
        let mut captured = PreviewHost {
            port: 0,
            label: String::new(),
        };
        match_parts(&self.parts, &host, &mut captured).then_some(captured)
    }
}

/// Matches `parts` against all of `input`. A placeholder takes the shortest run of its characters
/// that lets the rest match, so `3000-a-b.proxy` gives port 3000 and label `a-b`.
fn match_parts(parts: &[Part], input: &str, out: &mut PreviewHost) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return input.is_empty();
    };
    match first {
        Part::Literal(lit) => input
            .strip_prefix(lit.as_str())
            .is_some_and(|tail| match_parts(rest, tail, out)),
        Part::Port | Part::Sandbox => {
            let allowed = |c: char| match first {
                Part::Port => c.is_ascii_digit(),
                _ => c.is_ascii_alphanumeric() || c == '-' || c == '_',
            };
            let run = input.find(|c: char| !allowed(c)).unwrap_or(input.len());
            for end in 1..=run {
                let (value, tail) = input.split_at(end);
                if match_parts(rest, tail, out) {
                    match first {
                        Part::Port => match value.parse() {
                            Ok(port) if port > 0 => out.port = port,
                            _ => return false,
                        },
                        _ => out.label = value.to_string(),
                    }
                    return true;
                }
            }
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b9c2c3e-7d2f-4b1e-9f5a-2f4d6c8e0a11";

    #[test]
    fn domain_form_with_and_without_port() {
        let p = HostPattern::for_domain("proxy.localhost:4000");
        let want = Some(PreviewHost {
            port: 3000,
            label: ID.into(),
        });
        assert_eq!(p.parse(&format!("3000-{ID}.proxy.localhost:4000")), want);
        assert_eq!(p.parse(&format!("3000-{ID}.proxy.localhost")), want);
        assert_eq!(
            p.parse(&format!("3000-{}.PROXY.localhost", ID.to_uppercase())),
            want
        );
        assert_eq!(p.parse("proxy.localhost:4000"), None);
        assert_eq!(p.parse("127.0.0.1:4000"), None);
        assert_eq!(p.parse(&format!("abc-{ID}.proxy.localhost")), None);
        assert_eq!(p.parse(&format!("3000-{ID}.other.localhost")), None);
        assert_eq!(
            p.parse("99999-x.proxy.localhost"),
            None,
            "port out of range"
        );
        assert_eq!(p.parse("0-x.proxy.localhost"), None);
    }

    #[test]
    fn template_forms() {
        let p = HostPattern::from_template("http://{{PORT}}-{{sandboxId}}.proxy.localhost:4000")
            .unwrap();
        assert_eq!(p, HostPattern::for_domain("proxy.localhost"));
        let p = HostPattern::from_template("https://{{sandboxId}}--p{{PORT}}.preview.example.com/")
            .unwrap();
        assert_eq!(
            p.parse(&format!("{ID}--p8080.preview.example.com")),
            Some(PreviewHost {
                port: 8080,
                label: ID.into()
            })
        );
        assert_eq!(p.parse("x--p8080.example.com"), None);
        assert!(matches!(
            HostPattern::from_template("http://proxy.localhost:4000"),
            Err(HostPatternError::MissingPlaceholders(_))
        ));
    }
}
