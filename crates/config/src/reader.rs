//! Reading single variables: one typed accessor per kind of value, each recording a problem and
//! falling back to the default so that every bad variable is reported in one pass.

use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::InvalidVar;
use crate::secret::Secret;

pub(crate) struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    pub(crate) problems: Vec<InvalidVar>,
}

/// Unsigned integer types a variable can hold.
pub(crate) trait Int: FromStr + PartialOrd + Display + Copy {
    const MIN: Self;
    const MAX: Self;
}

macro_rules! impl_int {
    ($($t:ty),*) => {$(impl Int for $t { const MIN: Self = <$t>::MIN; const MAX: Self = <$t>::MAX; })*};
}
impl_int!(u8, u16, u32, u64);

/// Unit of a variable holding a whole number of time units (`*_SEC`, `*_MIN`, `*_HOURS`, `*_DAYS`).
#[derive(Clone, Copy)]
pub(crate) enum Unit {
    Seconds,
    Minutes,
    Hours,
    Days,
}

impl Unit {
    fn secs(self) -> u64 {
        match self {
            Unit::Seconds => 1,
            Unit::Minutes => 60,
            Unit::Hours => 3600,
            Unit::Days => 86_400,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Seconds => "seconds",
            Unit::Minutes => "minutes",
            Unit::Hours => "hours",
            Unit::Days => "days",
        }
    }
}

impl<'a> Reader<'a> {
    pub(crate) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            lookup,
            problems: Vec::new(),
        }
    }

    /// The trimmed value; a blank value counts as unset, as compose files write `- FOO=` for "default".
    pub(crate) fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn is_set(&self, name: &str) -> bool {
        self.raw(name).is_some()
    }

    pub(crate) fn reject(&mut self, name: &str, value: &str, expected: impl Into<String>) {
        self.problems.push(InvalidVar {
            var: name.to_owned(),
            value: value.to_owned(),
            expected: expected.into(),
        });
    }

    /// Parses `name` when set; a value `parse` refuses is reported and replaced by `default`.
    pub(crate) fn parse<T>(
        &mut self,
        name: &str,
        default: T,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> T {
        self.parse_opt(name, expected, parse).unwrap_or(default)
    }

    pub(crate) fn parse_opt<T>(
        &mut self,
        name: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let raw = self.raw(name)?;
        let parsed = parse(&raw);
        if parsed.is_none() {
            self.reject(name, &raw, expected);
        }
        parsed
    }

    pub(crate) fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    pub(crate) fn opt_string(&self, name: &str) -> Option<String> {
        self.raw(name)
    }

    pub(crate) fn secret(&self, name: &str, default: &str) -> Secret {
        Secret::new(self.string(name, default))
    }

    pub(crate) fn opt_secret(&self, name: &str) -> Option<Secret> {
        self.raw(name).map(Secret::new)
    }

    pub(crate) fn flag(&mut self, name: &str, default: bool) -> bool {
        self.opt_flag(name).unwrap_or(default)
    }

    pub(crate) fn opt_flag(&mut self, name: &str) -> Option<bool> {
        self.parse_opt(name, "true/false, 1/0 or yes/no", parse_bool)
    }

    pub(crate) fn int<T: Int>(&mut self, name: &str, default: T, min: T, max: T) -> T {
        self.opt_int(name, min, max).unwrap_or(default)
    }

    pub(crate) fn opt_int<T: Int>(&mut self, name: &str, min: T, max: T) -> Option<T> {
        let expected = match (min == T::MIN, max == T::MAX) {
            (true, true) => "a whole number (0 or more)".to_owned(),
            (false, true) => format!("a whole number of at least {min}"),
            _ => format!("a whole number from {min} to {max}"),
        };
        self.parse_opt(name, &expected, |v| {
            v.parse::<T>().ok().filter(|n| *n >= min && *n <= max)
        })
    }

    /// Any whole number the type holds.
    pub(crate) fn count<T: Int>(&mut self, name: &str, default: T) -> T {
        self.int(name, default, T::MIN, T::MAX)
    }

    pub(crate) fn port(&mut self, name: &str, default: u16) -> u16 {
        self.parse(name, default, "a port number (1-65535)", |v| {
            v.parse::<u16>().ok().filter(|p| *p != 0)
        })
    }

    /// A Go-style duration (`30s`, `1m`, `1h30m`, `500ms`) or a bare number of seconds.
    pub(crate) fn duration(&mut self, name: &str, default: Duration, min: Duration) -> Duration {
        let expected = if min.is_zero() {
            "a duration such as 30s, 1m or 1h30m".to_owned()
        } else {
            format!(
                "a duration of at least {} (such as 30s, 1m or 1h30m)",
                format_duration(min)
            )
        };
        self.parse(name, default, &expected, |v| {
            parse_duration(v).filter(|d| *d >= min)
        })
    }

    /// A whole number of `unit`s, at least `min`, as a [`Duration`].
    pub(crate) fn whole(&mut self, name: &str, default: u64, min: u64, unit: Unit) -> Duration {
        let expected = if min == 0 {
            format!("a whole number of {}", unit.name())
        } else {
            format!("a whole number of {} (at least {min})", unit.name())
        };
        let n = self.parse(name, default, &expected, |v| {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n >= min && n.checked_mul(unit.secs()).is_some())
        });
        Duration::from_secs(n * unit.secs())
    }

    /// A URL that must carry a scheme, because the default does and callers join paths onto it.
    pub(crate) fn url(&mut self, name: &str, default: &str) -> String {
        self.opt_url(name).unwrap_or_else(|| default.to_owned())
    }

    pub(crate) fn opt_url(&mut self, name: &str) -> Option<String> {
        self.parse_opt(name, "a URL with a scheme, such as http://host:port", |v| {
            has_scheme(v).then(|| v.to_owned())
        })
    }

    pub(crate) fn absolute_path(&mut self, name: &str) -> Option<PathBuf> {
        self.parse_opt(name, "an absolute path", |v| {
            let path = PathBuf::from(v);
            path.is_absolute().then_some(path)
        })
    }

    /// Set when the operator gave `name`; otherwise an error saying why it is needed.
    pub(crate) fn required(&mut self, name: &str, why: &str) -> Option<String> {
        let value = self.raw(name);
        if value.is_none() {
            self.reject(name, "", format!("a value {why}"));
        }
        value
    }
}

pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

fn has_scheme(v: &str) -> bool {
    let Some((scheme, rest)) = v.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !rest.is_empty()
}

/// Go's `time.ParseDuration` syntax (what upstream's runner reads), plus bare integers as seconds
/// because the seed documents `VOLUME_CLEANUP_INTERVAL` as a number of seconds.
pub(crate) fn parse_duration(v: &str) -> Option<Duration> {
    if v.bytes().all(|b| b.is_ascii_digit()) {
        return v.parse().ok().map(Duration::from_secs);
    }
    let mut rest = v;
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        nanos += number * unit_nanos;
    }
    (nanos.is_finite() && nanos < u64::MAX as f64).then(|| Duration::from_nanos(nanos as u64))
}

/// The shortest Go-style spelling of a whole-unit duration, for messages.
pub(crate) fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if secs != 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs != 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_go_syntax() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        for bad in ["", "s", "1x", "1.2.3s", "-5s", "m5", "1 m"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn durations_format_in_their_largest_unit() {
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn urls_need_a_scheme() {
        assert!(has_scheme("http://a"));
        assert!(has_scheme("s3+https://a"));
        assert!(!has_scheme("a:80"));
        assert!(!has_scheme("://a"));
        assert!(!has_scheme("http://"));
    }
}
