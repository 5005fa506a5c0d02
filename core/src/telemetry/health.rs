//! Whether a broker connection is usable now, for readiness probes.

use std::fmt;

/// What a connection says about itself, without asking the broker: cheap
/// enough for every readiness probe.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Connected (or, for the in-process broker, open): operations can
    /// succeed now.
    Usable,
    /// Not usable now: closed, or the connection is lost and being
    /// re-established. Operations fail or wait until it is back.
    Unusable(String),
    /// The adapter cannot tell.
    Unknown,
}

impl Health {
    /// Whether the connection is usable now.
    pub fn is_usable(&self) -> bool {
        matches!(self, Health::Usable)
    }

    /// The worse of two: unusable beats unknown beats usable.
    pub fn and(self, other: Health) -> Health {
        match (self, other) {
            (Health::Unusable(why), _) | (_, Health::Unusable(why)) => Health::Unusable(why),
            (Health::Unknown, _) | (_, Health::Unknown) => Health::Unknown,
            (Health::Usable, Health::Usable) => Health::Usable,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Usable => f.write_str("usable"),
            Health::Unusable(why) => write!(f, "unusable: {why}"),
            Health::Unknown => f.write_str("unknown"),
        }
    }
}
