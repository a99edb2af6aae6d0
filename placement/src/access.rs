//! Who may touch which jurisdiction's records, and which of their fields are personal.
//!
//! The topology grants client services access per jurisdiction — read, write, or both — and grants nothing
//! by default: a service with no grant for a jurisdiction can't learn its shard map, read or write a
//! record of it. A jurisdiction may also declare which fields of its records (JSON objects) are personal;
//! a reader outside the jurisdiction gets those fields pseudonymised (the Raft layer does that, with a key
//! only nodes inside hold).
//!
//! ```toml
//! [[grant]]
//! service = "billing"
//! jurisdiction = "EU"
//! access = "read-write"        # "read", "write" or "read-write"
//!
//! [[personal_data]]
//! jurisdiction = "EU"
//! format = "json"              # records are JSON objects
//! fields = ["phone", "ip"]
//! ```
//!
//! Pure, like the rest of the crate: the policy is data, and every question has one answer.

use std::collections::{BTreeMap, BTreeSet};

/// What a grant allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
}

impl Access {
    pub const READ: Access = Access {
        read: true,
        write: false,
    };
    pub const WRITE: Access = Access {
        read: false,
        write: true,
    };
    pub const READ_WRITE: Access = Access {
        read: true,
        write: true,
    };

    /// `read`, `write` or `read-write`, as the topology file spells them.
    pub fn parse(text: &str) -> Option<Access> {
        match text {
            "read" => Some(Access::READ),
            "write" => Some(Access::WRITE),
            "read-write" => Some(Access::READ_WRITE),
            _ => None,
        }
    }

    /// Whether this access covers everything `needed` asks for.
    pub fn covers(self, needed: Access) -> bool {
        (self.read || !needed.read) && (self.write || !needed.write)
    }

    fn union(self, other: Access) -> Access {
        Access {
            read: self.read || other.read,
            write: self.write || other.write,
        }
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.read, self.write) {
            (true, true) => "read-write",
            (true, false) => "read",
            (false, true) => "write",
            (false, false) => "none",
        })
    }
}

/// A jurisdiction's personal fields: top-level keys of its records' JSON objects.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PersonalFields {
    pub fields: BTreeSet<String>,
}

/// Grants and personal fields, by service and jurisdiction name (the names groups are fenced by).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AccessPolicy {
    grants: BTreeMap<(String, String), Access>,
    personal: BTreeMap<String, PersonalFields>,
}

impl AccessPolicy {
    /// Grants `access` to `service` on `jurisdiction`, in addition to what it already holds there.
    pub fn grant(&mut self, service: &str, jurisdiction: &str, access: Access) {
        let key = (service.to_string(), jurisdiction.to_string());
        let held = self.grants.get(&key).copied().unwrap_or_default();
        self.grants.insert(key, held.union(access));
    }

    /// Declares `fields` personal in `jurisdiction`'s records.
    pub fn declare_personal(&mut self, jurisdiction: &str, fields: impl IntoIterator<Item = String>) {
        self.personal
            .entry(jurisdiction.to_string())
            .or_default()
            .fields
            .extend(fields);
    }

    /// What `service` holds on `jurisdiction` (nothing unless granted).
    pub fn granted(&self, service: &str, jurisdiction: &str) -> Access {
        self.grants
            .get(&(service.to_string(), jurisdiction.to_string()))
            .copied()
            .unwrap_or_default()
    }

    /// The fields of `jurisdiction`'s records an outside reader must not see in clear; `None` when the
    /// jurisdiction declares none.
    pub fn personal_fields(&self, jurisdiction: &str) -> Option<&PersonalFields> {
        self.personal
            .get(jurisdiction)
            .filter(|personal| !personal.fields.is_empty())
    }

    /// Every grant, in (service, jurisdiction) order.
    pub fn grants(&self) -> impl Iterator<Item = (&str, &str, Access)> {
        self.grants
            .iter()
            .map(|((service, jurisdiction), access)| (service.as_str(), jurisdiction.as_str(), *access))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_granted_by_default_and_grants_add_up() {
        let mut policy = AccessPolicy::default();
        assert_eq!(policy.granted("billing", "EU"), Access::default());
        assert!(!policy.granted("billing", "EU").covers(Access::READ));
        assert!(policy.granted("billing", "EU").covers(Access::default()));
        policy.grant("billing", "EU", Access::READ);
        assert!(policy.granted("billing", "EU").covers(Access::READ));
        assert!(!policy.granted("billing", "EU").covers(Access::WRITE));
        assert!(!policy.granted("billing", "EEA").covers(Access::READ));
        assert!(!policy.granted("search", "EU").covers(Access::READ));
        policy.grant("billing", "EU", Access::WRITE);
        assert_eq!(policy.granted("billing", "EU"), Access::READ_WRITE);
        assert_eq!(Access::parse("read-write"), Some(Access::READ_WRITE));
        assert_eq!(Access::parse("admin"), None);
    }

    #[test]
    fn personal_fields_are_per_jurisdiction() {
        let mut policy = AccessPolicy::default();
        assert!(policy.personal_fields("EU").is_none());
        policy.declare_personal("EU", ["phone".to_string(), "ip".to_string()]);
        let fields = &policy.personal_fields("EU").unwrap().fields;
        assert!(fields.contains("phone") && fields.contains("ip"));
        assert!(policy.personal_fields("EEA").is_none());
    }
}
