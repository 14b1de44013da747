//! What the Raft log carries and what its state machine holds: each entry
//! is a [`MeshCommand`] (apply or delete one resource), and [`MeshState`]
//! is the set of resources every command so far leaves, keyed by kind,
//! namespace and name. Applying the same commands in the same order gives
//! the same state and the same [`MeshState::hash`] on every replica.

pub mod resources;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Names one resource: `kind/namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// The mesh's root of trust as stored in the replicated state (the `ca`
/// module generates, loads and signs with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub trust_domain: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// One entry of the Raft log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MeshCommand {
    /// Creates or replaces a resource. `document` is the whole resource
    /// (`apiVersion`, `kind`, `metadata`, `spec`) as JSON; `source` names
    /// who wrote it (`cli`, `file`, ...): a source only removes its own.
    Apply {
        key: ResourceKey,
        document: serde_json::Value,
        #[serde(default)]
        source: String,
    },
    /// Removes a resource; removing an absent one changes nothing.
    Delete { key: ResourceKey },
    /// Several changes applied together, as one config version.
    Batch(Vec<MeshCommand>),
    /// Sets the mesh's root CA (replacing any).
    SetCa { ca: CaRecord },
}

/// What applying a command did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshResponse {
    /// The state differs from before the command.
    pub changed: bool,
}

/// One stored resource, the source that wrote it, and the config version
/// (log index) that last changed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub document: serde_json::Value,
    pub source: String,
    /// A proxy that runs this version or a later one runs this document.
    #[serde(default)]
    pub version: u64,
}

impl Record {
    /// Same document from the same source, whenever it was written.
    pub fn same(&self, document: &serde_json::Value, source: &str) -> bool {
        self.document == *document && self.source == source
    }
}

/// The mesh configuration as of some applied log index.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored", into = "Stored")]
pub struct MeshState {
    resources: BTreeMap<ResourceKey, Record>,
    ca: Option<CaRecord>,
}

/// [`MeshState`] as serialized (snapshots): JSON object keys must be
/// strings, so the resources are a list of pairs.
#[derive(Serialize, Deserialize)]
struct Stored {
    resources: Vec<(ResourceKey, Record)>,
    #[serde(default)]
    ca: Option<CaRecord>,
}

impl From<Stored> for MeshState {
    fn from(s: Stored) -> Self {
        Self {
            resources: s.resources.into_iter().collect(),
            ca: s.ca,
        }
    }
}

impl From<MeshState> for Stored {
    fn from(s: MeshState) -> Self {
        Self {
            resources: s.resources.into_iter().collect(),
            ca: s.ca,
        }
    }
}

impl MeshState {
    /// Applies `command`, the entry at log index `index`.
    pub fn apply(&mut self, command: MeshCommand, index: u64) -> MeshResponse {
        let changed = match command {
            MeshCommand::Apply {
                key,
                document,
                source,
            } => match self.resources.get(&key) {
                Some(old) if old.same(&document, &source) => false,
                _ => {
                    let record = Record {
                        document,
                        source,
                        version: index,
                    };
                    self.resources.insert(key, record);
                    true
                }
            },
            MeshCommand::Delete { key } => self.resources.remove(&key).is_some(),
            MeshCommand::SetCa { ca } => {
                let changed = self.ca.as_ref() != Some(&ca);
                self.ca = Some(ca);
                changed
            }
            MeshCommand::Batch(commands) => {
                // Every command applies; no short circuit.
                let mut changed = false;
                for c in commands {
                    changed |= self.apply(c, index).changed;
                }
                changed
            }
        };
        MeshResponse { changed }
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&Record> {
        self.resources.get(key)
    }

    /// Every resource, ordered by key.
    pub fn resources(&self) -> impl Iterator<Item = (&ResourceKey, &Record)> {
        self.resources.iter()
    }

    /// The root CA, once the leader has stored one.
    pub fn ca(&self) -> Option<&CaRecord> {
        self.ca.as_ref()
    }

    pub fn len(&self) -> usize {
        self.resources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    /// SHA-256 of the state, hex: equal on replicas that applied the same
    /// commands.
    pub fn hash(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for (key, record) in &self.resources {
            let key = key.to_string();
            let document = record.document.to_string();
            for part in [
                key.as_bytes(),
                document.as_bytes(),
                record.source.as_bytes(),
            ] {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
        }
        if let Some(ca) = &self.ca {
            for part in [
                ca.trust_domain.as_bytes(),
                ca.cert_pem.as_bytes(),
                ca.key_pem.as_bytes(),
            ] {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part);
            }
        }
        hex(ctx.finish().as_ref())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> ResourceKey {
        ResourceKey {
            kind: "VirtualService".into(),
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn apply(name: &str, weight: u32) -> MeshCommand {
        MeshCommand::Apply {
            key: key(name),
            document: json!({"kind": "VirtualService", "spec": {"weight": weight}}),
            source: "cli".into(),
        }
    }

    #[test]
    fn apply_replace_delete_report_changes() {
        let mut s = MeshState::default();
        assert!(s.apply(apply("a", 1), 1).changed);
        assert!(!s.apply(apply("a", 1), 1).changed, "same document again");
        assert!(s.apply(apply("a", 2), 5).changed);
        assert_eq!(
            s.get(&key("a")).map(|r| r.version),
            Some(5),
            "the index that changed it"
        );
        assert!(!s.apply(apply("a", 2), 6).changed);
        assert_eq!(
            s.get(&key("a")).map(|r| r.version),
            Some(5),
            "unchanged by a repeat"
        );
        assert_eq!(
            s.get(&key("a")).expect("present").document["spec"]["weight"],
            2
        );
        assert!(s.apply(MeshCommand::Delete { key: key("a") }, 2).changed);
        assert!(!s.apply(MeshCommand::Delete { key: key("a") }, 2).changed);
        assert!(s.is_empty());
    }

    #[test]
    fn a_batch_applies_every_change() {
        let mut s = MeshState::default();
        s.apply(apply("a", 1), 1);
        let batch = MeshCommand::Batch(vec![apply("b", 1), MeshCommand::Delete { key: key("a") }]);
        assert!(s.apply(batch.clone(), 3).changed);
        assert!(!s.apply(batch, 4).changed, "same batch again");
        assert!(s.get(&key("a")).is_none() && s.get(&key("b")).is_some());
    }

    #[test]
    fn hash_follows_content_not_history() {
        let mut one = MeshState::default();
        let mut two = MeshState::default();
        one.apply(apply("a", 1), 1);
        one.apply(apply("b", 1), 1);
        two.apply(apply("b", 7), 1);
        two.apply(apply("a", 1), 1);
        assert_ne!(one.hash(), two.hash());
        two.apply(apply("b", 1), 1);
        assert_eq!(one.hash(), two.hash());
        assert_eq!(one.hash().len(), 64);
    }

    #[test]
    fn round_trips_through_json() {
        let mut s = MeshState::default();
        s.apply(apply("a", 1), 1);
        s.apply(apply("b", 2), 1);
        let text = serde_json::to_string(&s).expect("serializes");
        let back: MeshState = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, s);
        assert_eq!(back.hash(), s.hash());
    }
}
