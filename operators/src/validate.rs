//! Payload validation against JSON Schemas registered per (tenant or `*`, type, schemaVersion),
//! with a policy for types that have no schema. Used by the decode operator, where the parsed
//! payload is at hand.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::envelope::Violation;

/// What to do with an event whose (tenant, type, version) has no schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownTypePolicy {
    /// Accept it unchecked.
    #[default]
    Accept,
    /// Dead-letter it (`unknown_event_type`).
    DeadLetter,
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaRejection {
    /// The schema's violations, each with the JSON pointer into the payload.
    Violations(Vec<Violation>),
    /// No schema, and the policy is to dead-letter.
    UnknownType,
}

/// A schema could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON Schema for {key}: {reason}")]
pub struct SchemaError {
    /// `tenant/type/version`.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

type Key = (Option<String>, String, i32);

/// The registered schemas.
#[derive(Default)]
pub struct SchemaRegistry {
    schemas: HashMap<Key, jsonschema::Validator>,
    policy: UnknownTypePolicy,
}

impl std::fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("schemas", &self.schemas.len())
            .field("policy", &self.policy)
            .finish()
    }
}

/// The registry as the workers share it; replaced whole when the schema directory changes.
pub type SharedRegistry = Arc<RwLock<Arc<SchemaRegistry>>>;

impl SchemaRegistry {
    /// An empty registry with `policy` for types without a schema.
    pub fn new(policy: UnknownTypePolicy) -> Self {
        Self {
            schemas: HashMap::new(),
            policy,
        }
    }

    /// Registers `schema` for `tenant` (`None` for every tenant), `event_type` and `version`.
    pub fn add(
        &mut self,
        tenant: Option<&str>,
        event_type: &str,
        version: i32,
        schema: &Value,
    ) -> Result<(), SchemaError> {
        let key = format!("{}/{event_type}/v{version}", tenant.unwrap_or("*"));
        let validator = jsonschema::validator_for(schema).map_err(|e| SchemaError {
            key,
            reason: e.to_string(),
        })?;
        self.schemas.insert(
            (tenant.map(str::to_owned), event_type.to_owned(), version),
            validator,
        );
        Ok(())
    }

    /// Number of registered schemas.
    pub fn len(&self) -> usize {
        self.schemas.len()
    }

    /// Whether no schema is registered.
    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }

    /// Checks a payload; the tenant's own schema wins over the one for every tenant.
    pub fn check(
        &self,
        tenant: &str,
        event_type: &str,
        version: i32,
        payload: &Value,
    ) -> Result<(), SchemaRejection> {
        let own = (Some(tenant.to_owned()), event_type.to_owned(), version);
        let any = (None, event_type.to_owned(), version);
        let Some(validator) = self.schemas.get(&own).or_else(|| self.schemas.get(&any)) else {
            return match self.policy {
                UnknownTypePolicy::Accept => Ok(()),
                UnknownTypePolicy::DeadLetter => Err(SchemaRejection::UnknownType),
            };
        };
        let violations: Vec<Violation> = validator
            .iter_errors(payload)
            .map(|error| Violation {
                pointer: format!("/payload{}", error.instance_path()),
                detail: error.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(SchemaRejection::Violations(violations))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry(policy: UnknownTypePolicy) -> SchemaRegistry {
        let mut registry = SchemaRegistry::new(policy);
        let order = json!({"type": "object", "required": ["orderId"],
            "properties": {"orderId": {"type": "integer"}}});
        registry.add(None, "order.created", 1, &order).unwrap();
        let strict = json!({"type": "object", "required": ["orderId", "region"]});
        registry
            .add(Some("acme"), "order.created", 1, &strict)
            .unwrap();
        registry
    }

    #[test]
    fn payloads_are_checked_with_pointers_and_the_tenant_schema_wins() {
        let registry = registry(UnknownTypePolicy::Accept);
        assert_eq!(
            registry.check("globex", "order.created", 1, &json!({"orderId": 1})),
            Ok(())
        );
        let Err(SchemaRejection::Violations(found)) =
            registry.check("globex", "order.created", 1, &json!({"orderId": "x"}))
        else {
            panic!("a string orderId passed");
        };
        assert_eq!(found[0].pointer, "/payload/orderId");
        assert!(
            registry
                .check("acme", "order.created", 1, &json!({"orderId": 1}))
                .is_err(),
            "acme's own schema also requires region"
        );
    }

    #[test]
    fn unknown_types_follow_the_policy() {
        let payload = json!({"anything": true});
        assert_eq!(
            registry(UnknownTypePolicy::Accept).check("a", "x", 1, &payload),
            Ok(())
        );
        assert_eq!(
            registry(UnknownTypePolicy::DeadLetter).check("a", "order.created", 2, &payload),
            Err(SchemaRejection::UnknownType),
            "another version of a known type is unknown too"
        );
    }

    #[test]
    fn an_invalid_schema_is_refused_with_its_key() {
        let mut registry = SchemaRegistry::new(UnknownTypePolicy::Accept);
        let err = registry
            .add(Some("acme"), "t", 3, &json!({"type": 12}))
            .unwrap_err();
        assert_eq!(err.key, "acme/t/v3");
    }
}
