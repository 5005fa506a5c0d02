//! The readable timeline a scenario prints: one line per step, with the
//! time since the scenario started and who did it.

use std::sync::Arc;
use std::time::Instant;

/// Where services and scenario drivers write what they did. Cheap to
/// clone; [`Timeline::silent`] writes nothing (services run alone, tests).
#[derive(Debug, Clone)]
pub struct Timeline {
    started: Option<Arc<Instant>>,
}

impl Timeline {
    /// A timeline printing to standard output, starting now.
    pub fn printing() -> Self {
        Timeline {
            started: Some(Arc::new(Instant::now())),
        }
    }

    /// A timeline that prints nothing.
    pub fn silent() -> Self {
        Timeline { started: None }
    }

    /// Prints `what` as done by `who`.
    pub fn note(&self, who: &str, what: impl AsRef<str>) {
        if let Some(started) = &self.started {
            let ms = started.elapsed().as_millis();
            println!("{ms:>7} ms  {who:<13} {}", what.as_ref());
        }
    }
}

/// The last characters of an id (UUID v7 ids share their first ones),
/// enough to tell orders apart on screen.
pub fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}
