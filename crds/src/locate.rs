//! Finds the line and column of a field path in a YAML document.
//!
//! serde_yaml keeps positions only while it parses, so we parse the document
//! again with a seed that walks the path and fails on purpose at the target:
//! the error carries the target's position. No second YAML parser needed.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::diagnostic::{FieldPath, Segment};

const FOUND: &str = "\u{0}trellis-locate-found";

/// Position (1-based line, column) of the node at `path` in the
/// `document`-th YAML document of `source`, or of its nearest ancestor.
pub fn locate(source: &str, document: usize, path: &FieldPath) -> Option<(usize, usize)> {
    let segments = path.segments();
    // Try the full path, then ancestors, so a missing field points at its parent.
    (0..=segments.len()).rev().find_map(|len| {
        let doc = serde_yaml::Deserializer::from_str(source).nth(document)?;
        match Seek(&segments[..len]).deserialize(doc) {
            Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
            _ => None,
        }
    })
}

struct Seek<'a>(&'a [Segment]);

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Seek<'_> {
    fn here<E: de::Error>(&self) -> Result<(), E> {
        if self.0.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

macro_rules! scalar {
    ($($name:ident: $ty:ty),*) => {
        $(fn $name<E: de::Error>(self, _: $ty) -> Result<(), E> { self.here() })*
    };
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    scalar!(visit_bool: bool, visit_i64: i64, visit_u64: u64, visit_f64: f64, visit_str: &str);

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.here()
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.0.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            let matches = match (first, &key) {
                (Segment::Key(want), serde_yaml::Value::String(k)) => want == k,
                (Segment::Key(want), other) => serde_yaml::to_string(other)
                    .map(|s| s.trim() == want)
                    .unwrap_or(false),
                _ => false,
            };
            if matches {
                return map.next_value_seed(Seek(rest));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.0.split_first() else {
            return Err(de::Error::custom(FOUND));
        };
        let Segment::Index(want) = first else {
            return Ok(());
        };
        for _ in 0..*want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
        }
        seq.next_element_seed(Seek(rest)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str =
        "kind: A\n---\nkind: B\nspec:\n  http:\n  - route:\n    - weight: 10\n    - weight: 20\n";

    #[test]
    fn finds_nodes_in_later_documents() {
        let p = FieldPath::root()
            .key("spec")
            .key("http")
            .index(0)
            .key("route")
            .index(1)
            .key("weight");
        assert_eq!(locate(SRC, 1, &p), Some((8, 15)));
        assert_eq!(locate(SRC, 1, &FieldPath::root().key("kind")), Some((3, 7)));
    }

    #[test]
    fn missing_field_points_at_parent() {
        let p = FieldPath::root()
            .key("spec")
            .key("http")
            .index(0)
            .key("nope");
        assert_eq!(locate(SRC, 1, &p), Some((6, 5)));
    }
}
