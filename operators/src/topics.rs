//! Topic names, each prefixed so that several deployments or tests can share one broker.

/// Unprefixed name of the topic the gateway writes accepted events to.
pub const RAW_EVENTS: &str = "events.raw.v1";
/// Unprefixed name of the dead-letter topic.
pub const DEAD_LETTERS: &str = "events.dlq.v1";
/// Unprefixed name of the topic of gateway outcomes (per-window answer counts).
pub const GATEWAY_OUTCOMES: &str = "gateway.outcomes.v1";

/// The topic names one deployment uses, derived from its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicNames {
    /// Topic of accepted raw events (`<prefix>events.raw.v1`).
    pub raw_events: String,
    /// Topic of dead letters (`<prefix>events.dlq.v1`).
    pub dead_letters: String,
    /// Topic of gateway outcomes (`<prefix>gateway.outcomes.v1`).
    pub gateway_outcomes: String,
}

impl TopicNames {
    /// Names for the given prefix; the prefix is used verbatim (include a separator yourself).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            raw_events: format!("{prefix}{RAW_EVENTS}"),
            dead_letters: format!("{prefix}{DEAD_LETTERS}"),
            gateway_outcomes: format!("{prefix}{GATEWAY_OUTCOMES}"),
        }
    }

    /// Every topic a deployment needs, for creation at start.
    pub fn all(&self) -> [&str; 3] {
        [&self.raw_events, &self.dead_letters, &self.gateway_outcomes]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_prepended_to_every_topic() {
        let names = TopicNames::with_prefix("test-7.");
        assert_eq!(names.raw_events, "test-7.events.raw.v1");
        assert_eq!(names.dead_letters, "test-7.events.dlq.v1");
        assert_eq!(TopicNames::with_prefix("").raw_events, RAW_EVENTS);
    }
}
