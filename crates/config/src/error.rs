use std::fmt;

/// One environment variable whose value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}={value:?}: expected {expected}")]
pub struct InvalidVar {
    pub var: String,
    pub value: String,
    pub expected: String,
}

/// Every problem found while reading the configuration, so an operator can fix them in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<InvalidVar>,
}

impl ConfigError {
    /// The problem reported for `var`, if any.
    pub fn for_var(&self, var: &str) -> Option<&InvalidVar> {
        self.problems.iter().find(|p| p.var == var)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [only] => write!(f, "{only}"),
            all => {
                write!(f, "{} configuration errors:", all.len())?;
                for problem in all {
                    write!(f, "\n  {problem}")?;
                }
                Ok(())
            }
        }
    }
}
