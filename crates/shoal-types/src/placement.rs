//! The placement map: which nodes hold the replicas of each bucket.
//!
//! The monitor computes a map with `shoal_placement::place` and publishes it in
//! the registry under `placement`; nodes and proxies read it to learn where a
//! bucket lives. This module only holds the type and its persisted form, so
//! that every crate can read the map without depending on the placement
//! algorithm.
//!
//! Invariants of a map that decodes successfully:
//! - `buckets` has exactly [`BUCKET_COUNT`] entries, indexed by the bucket byte;
//! - no node appears twice in one bucket's replica list;
//! - the first replica of a bucket is the preferred leader (a hint only).
//!
//! `epoch` grows by one with every change of the assignment, the replication
//! factor or the topology, so that a reader can tell which of two maps is newer
//! and a node can refuse requests routed with an older map.
//!
//! # Persisted form and versions
//!
//! The map is stored as JSON with a `format` field ([`PLACEMENT_FORMAT`]).
//! [`PlacementMap::decode`] reads `format` first: a newer format is refused
//! (the reader must be upgraded; it must not guess), the current one is parsed
//! directly, and older formats, once there are any, are migrated there.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{BUCKET_COUNT, BucketId, Error, NodeId, Result};

/// The version of the persisted placement map written by this build.
pub const PLACEMENT_FORMAT: u32 = 1;

/// When the monitor recomputes the placement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// Replicas move only on an explicit rebalance request; a node that leaves
    /// keeps its buckets in the map until then.
    Static,
    /// The map follows membership: joins and departures trigger a new placement.
    #[default]
    Dynamic,
}

/// The assignment of every bucket to the nodes that replicate it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementMap {
    /// The persisted format version; [`PLACEMENT_FORMAT`] for maps built here.
    pub format: u32,
    /// Bumped by every change of the map; 0 for the empty map.
    pub epoch: u64,
    /// The number of replicas each bucket should have (fewer when there are
    /// fewer live nodes).
    pub replication_factor: usize,
    /// Whether the map follows membership or only explicit rebalances.
    #[serde(default)]
    pub topology: Topology,
    /// Exactly [`BUCKET_COUNT`] entries, indexed by the bucket byte: the nodes
    /// holding that bucket, preferred leader first.
    pub buckets: Vec<Vec<NodeId>>,
}

impl PlacementMap {
    /// A map at epoch 0 in which no bucket has a replica.
    pub fn empty(replication_factor: usize, topology: Topology) -> Self {
        PlacementMap {
            format: PLACEMENT_FORMAT,
            epoch: 0,
            replication_factor,
            topology,
            buckets: vec![Vec::new(); BUCKET_COUNT],
        }
    }

    /// The nodes holding `bucket`, preferred leader first.
    pub fn replicas(&self, bucket: BucketId) -> &[NodeId] {
        // A decoded or constructed map has 256 entries; a hand-built short map
        // simply reports no replicas instead of panicking.
        self.buckets.get(usize::from(bucket.0)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The persisted form: JSON carrying `format`.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a placement map consists of strings and integers")
    }

    /// Parses a persisted map, migrating older formats and refusing newer ones
    /// and malformed data with [`Error::InvalidData`].
    pub fn decode(bytes: &[u8]) -> Result<PlacementMap> {
        /// Just the version marker: read first, so that a newer format whose
        /// other fields changed shape is reported as newer, not as malformed.
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header = serde_json::from_slice(bytes)
            .map_err(|e| Error::InvalidData(format!("placement map: {e}")))?;
        let map = match header.format {
            PLACEMENT_FORMAT => serde_json::from_slice::<PlacementMap>(bytes)
                .map_err(|e| Error::InvalidData(format!("placement map: {e}")))?,
            // Migration hook: when format 2 exists, format 1 is parsed into its
            // own struct here and converted.
            v if v > PLACEMENT_FORMAT => {
                return Err(Error::InvalidData(format!(
                    "placement map format {v} is newer than the newest format this build \
                     reads ({PLACEMENT_FORMAT}); upgrade this process"
                )));
            }
            v => return Err(Error::InvalidData(format!("unknown placement map format {v}"))),
        };
        map.validate()?;
        Ok(map)
    }

    /// How many replicas each node holds. Nodes without replicas are absent.
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for replicas in &self.buckets {
            for node in replicas {
                *counts.entry(node.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Checks the invariants listed in the module docs.
    fn validate(&self) -> Result<()> {
        if self.buckets.len() != BUCKET_COUNT {
            return Err(Error::InvalidData(format!(
                "placement map has {} buckets, expected {BUCKET_COUNT}",
                self.buckets.len()
            )));
        }
        for (bucket, replicas) in self.buckets.iter().enumerate() {
            let distinct: BTreeSet<&NodeId> = replicas.iter().collect();
            if distinct.len() != replicas.len() {
                return Err(Error::InvalidData(format!(
                    "placement map lists a node twice in bucket {bucket:02x}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PlacementMap {
        let mut map = PlacementMap::empty(2, Topology::Static);
        map.epoch = 7;
        map.buckets[0] = vec![NodeId("a".into()), NodeId("b".into())];
        map.buckets[255] = vec![NodeId("b".into())];
        map
    }

    #[test]
    fn empty_map() {
        let map = PlacementMap::empty(3, Topology::default());
        assert_eq!(map.format, PLACEMENT_FORMAT);
        assert_eq!(map.epoch, 0);
        assert_eq!(map.topology, Topology::Dynamic);
        assert_eq!(map.buckets.len(), BUCKET_COUNT);
        assert!(BucketId::all().all(|b| map.replicas(b).is_empty()));
        assert!(map.replica_counts().is_empty());
    }

    #[test]
    fn round_trip() {
        let map = sample();
        let bytes = map.encode();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"format\":1"), "{text}");
        assert!(text.contains("\"topology\":\"static\""), "{text}");
        assert_eq!(PlacementMap::decode(&bytes).unwrap(), map);
        assert_eq!(map.replicas(BucketId(0)), &[NodeId("a".into()), NodeId("b".into())]);
        let counts = map.replica_counts();
        assert_eq!(counts[&NodeId("a".into())], 1);
        assert_eq!(counts[&NodeId("b".into())], 2);
    }

    #[test]
    fn topology_defaults_to_dynamic() {
        let mut value: serde_json::Value = serde_json::from_slice(&sample().encode()).unwrap();
        value.as_object_mut().unwrap().remove("topology");
        let map = PlacementMap::decode(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(map.topology, Topology::Dynamic);
    }

    #[test]
    fn refuses_newer_format() {
        // A future format may change every other field; only `format` is read.
        let bytes = br#"{"format": 2, "layout": "something else"}"#;
        match PlacementMap::decode(bytes) {
            Err(Error::InvalidData(message)) => assert!(message.contains("format 2"), "{message}"),
            other => panic!("expected InvalidData, got {other:?}"),
        }
    }

    #[test]
    fn refuses_malformed_data() {
        let mut short = sample();
        short.buckets.pop();
        let mut twice = sample();
        twice.buckets[3] = vec![NodeId("a".into()), NodeId("a".into())];
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"not json".to_vec(),
            b"{}".to_vec(),
            br#"{"format": 0}"#.to_vec(),
            br#"{"format": 1}"#.to_vec(),
            br#"{"format": "1", "epoch": 1}"#.to_vec(),
            short.encode(),
            twice.encode(),
        ];
        for bytes in cases {
            let result = PlacementMap::decode(&bytes);
            assert!(
                matches!(result, Err(Error::InvalidData(_))),
                "{}: {result:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }
}
