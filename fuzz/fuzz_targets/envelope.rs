//! Fuzz target: the envelope parser and the canonical hash never panic, and what they accept
//! keeps its invariants.

#![no_main]

use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use operators::canonical::canonical_hash;
use operators::envelope::{parse_envelope, parse_json, EnvelopeError, EnvelopeLimits};

fuzz_target!(|data: &[u8]| {
    let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).expect("a valid instant");
    let limits = EnvelopeLimits::default();
    match parse_envelope(data, &limits, now) {
        Ok(envelope) => {
            assert_eq!(
                envelope.record_key().matches('|').count(),
                1,
                "one separator in the key"
            );
            assert!(envelope.schema_version >= 1);
        }
        Err(EnvelopeError::Invalid { violations }) => {
            assert!(
                !violations.is_empty(),
                "an invalid envelope names its violations"
            );
        }
        Err(EnvelopeError::MalformedJson { line, column, .. }) => {
            assert!(line >= 1 || column == 0);
        }
    }
    if let Ok(value) = parse_json(data) {
        let Ok(hash) = canonical_hash(&value) else {
            return;
        };
        assert_eq!(hash.len(), 64);
        let reparsed: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&value).expect("serialises"))
                .expect("parses");
        assert_eq!(
            canonical_hash(&reparsed).ok(),
            Some(hash),
            "the hash survives a round trip"
        );
    }
});
