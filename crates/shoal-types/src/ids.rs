//! Identifiers. Every id is a newtype so that a bucket can never be passed
//! where a base is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// The number of buckets. Fixed: a bucket is the first byte of a base id.
pub const BUCKET_COUNT: usize = 256;

/// A base: one relational database, named by a UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BaseId(pub Uuid);

impl BaseId {
    /// A fresh random id (UUID v4).
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The bucket this base belongs to: its first two hex characters.
    pub fn bucket(&self) -> BucketId {
        BucketId(self.0.as_bytes()[0])
    }
}

impl fmt::Display for BaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Lower-case hyphenated: the form used in paths, file names and catalogs,
        // so that string order equals id order.
        write!(f, "{}", self.0.hyphenated())
    }
}

impl FromStr for BaseId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Uuid::parse_str(s)
            .map(BaseId)
            .map_err(|_| Error::InvalidInput(format!("invalid base id {s:?}: expected a UUID")))
    }
}

/// A bucket: the unit of placement and replication, `00`..`ff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BucketId(pub u8);

impl BucketId {
    /// Every bucket, in order.
    pub fn all() -> impl Iterator<Item = BucketId> {
        (0..=u8::MAX).map(BucketId)
    }
}

impl fmt::Display for BucketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

impl FromStr for BucketId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.len() != 2 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::InvalidInput(format!(
                "invalid bucket {s:?}: expected two hex digits"
            )));
        }
        u8::from_str_radix(s, 16).map(BucketId).map_err(|_| {
            Error::InvalidInput(format!("invalid bucket {s:?}: expected two hex digits"))
        })
    }
}

impl Serialize for BucketId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BucketId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A node: a stable name chosen by the operator, e.g. `node-01`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A registry lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A registry revision: bumped by every change, cluster-wide.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Revision(pub i64);

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_first_two_hex_chars() {
        let id: BaseId = "AB12cd34-0000-4000-8000-000000000000".parse().unwrap();
        assert_eq!(id.bucket().to_string(), "ab");
        assert_eq!(id.to_string(), "ab12cd34-0000-4000-8000-000000000000");
    }

    #[test]
    fn bad_ids_are_invalid_input() {
        assert!(matches!("nope".parse::<BaseId>(), Err(Error::InvalidInput(_))));
        assert!(matches!("g0".parse::<BucketId>(), Err(Error::InvalidInput(_))));
        assert!(matches!("abc".parse::<BucketId>(), Err(Error::InvalidInput(_))));
        assert_eq!("0f".parse::<BucketId>().unwrap(), BucketId(15));
    }

    #[test]
    fn string_order_is_id_order() {
        let mut ids: Vec<BaseId> = (0..100).map(|_| BaseId::random()).collect();
        let mut strings: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        ids.sort();
        strings.sort();
        assert_eq!(ids.iter().map(|i| i.to_string()).collect::<Vec<_>>(), strings);
    }
}
