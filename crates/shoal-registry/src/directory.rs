//! The cluster's state in the registry, with one owner: the records the
//! processes write (each with a format version), and the reads and watches
//! every process makes of them (the live nodes, the placement map, members,
//! drain marks). Monitors, nodes and proxies read the cluster through here
//! and never decode a key's value by hand.
//!
//! **Records.** A [`Record`] is stored as a JSON object with a `format`
//! field beside its own fields. A reader accepts its own format and older
//! ones (a record written before formats existed has none, and is format
//! 1), and refuses a newer one with an error that says so, rather than
//! misreading it. The placement map carries its own format the same way
//! (`PlacementMap::decode`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_types::api::{
    BaseLocation, Member, MonitorInfo, NodeInfo, NodeRef, NodeReport, RebalanceRequest,
};
use shoal_types::placement::PlacementMap;
use shoal_types::{BucketId, NodeId};

use crate::error::{Error, Result};
use crate::keys;
use crate::registry::Registry;
use shoal_types::Revision;

/// A value the cluster keeps in the registry.
pub trait Record: Serialize + DeserializeOwned {
    /// What it is, for error messages ("node registration").
    const WHAT: &'static str;
    /// The format this version writes and the newest it reads.
    const FORMAT: u32 = 1;
}

impl Record for NodeInfo {
    const WHAT: &'static str = "node registration";
}

impl Record for NodeReport {
    const WHAT: &'static str = "node status report";
}

impl Record for Member {
    const WHAT: &'static str = "member record";
}

impl Record for MonitorInfo {
    const WHAT: &'static str = "monitor record";
}

impl Record for RebalanceRequest {
    const WHAT: &'static str = "rebalance request";
}

/// Encodes a record with its format.
pub fn encode<R: Record>(record: &R) -> Result<Vec<u8>> {
    let internal =
        |e: serde_json::Error| Error::Internal(format!("cannot encode a {}: {e}", R::WHAT));
    let mut value = serde_json::to_value(record).map_err(internal)?;
    match &mut value {
        serde_json::Value::Object(fields) => {
            fields.insert("format".into(), R::FORMAT.into());
        }
        _ => return Err(Error::Internal(format!("a {} is not a JSON object", R::WHAT))),
    }
    serde_json::to_vec(&value).map_err(internal)
}

/// Decodes a record, refusing a format newer than this version reads.
pub fn decode<R: Record>(bytes: &[u8]) -> Result<R> {
    let bad = |e: String| Error::Internal(format!("unreadable {}: {e}", R::WHAT));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let format = match value.get("format") {
        None => 1,
        Some(f) => f.as_u64().ok_or_else(|| bad(format!("format {f} is not a number")))?,
    };
    if format > u64::from(R::FORMAT) {
        return Err(Error::Internal(format!(
            "the {} has format {format}, written by a newer Shoal; this one reads up to format {}: \
             upgrade this process",
            R::WHAT,
            R::FORMAT
        )));
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// Where buckets live: the placement map and the live nodes.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// The latest placement map.
    pub map: Option<PlacementMap>,
    /// Live nodes.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
}

impl Directory {
    /// A live node as clients see it.
    pub fn node_ref(&self, id: &NodeId) -> Option<NodeRef> {
        self.nodes.get(id).map(|i| NodeRef { node_id: id.clone(), node_url: i.node_url.clone() })
    }

    /// Where `bucket` lives by the map, naming `leader` if it is live.
    pub fn location(&self, bucket: BucketId, leader: Option<&NodeId>) -> BaseLocation {
        let (replicas, epoch) = match &self.map {
            Some(map) => {
                (map.replicas(bucket).iter().filter_map(|n| self.node_ref(n)).collect(), map.epoch)
            }
            None => (Vec::new(), 0),
        };
        BaseLocation { bucket, leader: leader.and_then(|l| self.node_ref(l)), replicas, epoch }
    }

    /// The public URLs of a bucket's replicas.
    pub fn replica_urls(&self, bucket: BucketId) -> Vec<String> {
        let Some(map) = &self.map else { return Vec::new() };
        map.replicas(bucket)
            .iter()
            .filter_map(|n| self.nodes.get(n).map(|i| i.node_url.clone()))
            .collect()
    }
}

/// The live nodes (registrations that decode), with the revision of the read.
pub async fn live_nodes(registry: &dyn Registry) -> Result<(BTreeMap<NodeId, NodeInfo>, Revision)> {
    let listing = registry.get_prefix(keys::NODES).await?;
    let mut nodes = BTreeMap::new();
    for kv in &listing.kvs {
        let Some(id) = keys::node_of(&kv.key) else { continue };
        match decode::<NodeInfo>(&kv.value) {
            Ok(info) => {
                nodes.insert(id, info);
            }
            Err(e) => tracing::warn!(node = %id, error = %e, "ignoring a node registration"),
        }
    }
    Ok((nodes, listing.revision))
}

/// The placement map, if the monitor has written one, with the revision it
/// was written at.
pub async fn placement(registry: &dyn Registry) -> Result<Option<(PlacementMap, Revision)>> {
    match registry.get(keys::PLACEMENT).await? {
        Some(kv) => {
            let map = PlacementMap::decode(&kv.value)
                .map_err(|e| Error::Internal(format!("unreadable placement map: {e}")))?;
            Ok(Some((map, kv.mod_revision)))
        }
        None => Ok(None),
    }
}

/// Every node the monitor has seen and not forgotten.
pub async fn members(registry: &dyn Registry) -> Result<BTreeMap<NodeId, Member>> {
    let mut members = BTreeMap::new();
    for kv in registry.get_prefix(keys::MEMBERS).await?.kvs {
        let Some(id) = keys::member_of(&kv.key) else { continue };
        match decode::<Member>(&kv.value) {
            Ok(m) => {
                members.insert(id, m);
            }
            Err(e) => tracing::warn!(node = %id, error = %e, "ignoring a member record"),
        }
    }
    Ok(members)
}

/// The drained nodes.
pub async fn drained(registry: &dyn Registry) -> Result<BTreeSet<NodeId>> {
    let listing = registry.get_prefix(keys::DRAINED).await?;
    Ok(listing.kvs.iter().filter_map(|kv| keys::node_of(&kv.key)).collect())
}

/// The nodes' status reports.
pub async fn reports(registry: &dyn Registry) -> Result<BTreeMap<NodeId, NodeReport>> {
    let mut reports = BTreeMap::new();
    for kv in registry.get_prefix(keys::STATUS).await?.kvs {
        if let (Some(id), Ok(r)) = (keys::node_of(&kv.key), decode::<NodeReport>(&kv.value)) {
            reports.insert(id, r);
        }
    }
    Ok(reports)
}

/// Reads the live nodes and the placement map once; returns them with the
/// registry revision the nodes were read at (watch from the next one).
pub async fn read_directory(registry: &dyn Registry) -> Result<(Directory, Revision)> {
    let (nodes, revision) = live_nodes(registry).await?;
    let map = placement(registry).await?.map(|(map, _)| map);
    Ok((Directory { map, nodes }, revision))
}

/// Returns on the first change of the map or the nodes after `revision`,
/// or after `interval` at the latest (a safety net against a lost watch).
pub async fn directory_changed(registry: &dyn Registry, revision: Revision, interval: Duration) {
    let from = Revision(revision.0 + 1);
    let wait = async {
        let placement = registry.watch_prefix(keys::PLACEMENT, from).await;
        let nodes = registry.watch_prefix(keys::NODES, from).await;
        match (placement, nodes) {
            (Ok(mut p), Ok(mut n)) => {
                tokio::select! {
                    _ = p.next() => {}
                    _ = n.next() => {}
                }
            }
            _ => tokio::time::sleep(interval).await,
        }
    };
    tokio::select! {
        _ = wait => {}
        _ = tokio::time::sleep(interval) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_their_format_and_newer_ones_are_refused() {
        let info = MonitorInfo { id: "m1".into(), url: Some("http://127.0.0.1:1".into()) };
        let bytes = encode(&info).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["format"], 1);
        assert_eq!(decode::<MonitorInfo>(&bytes).unwrap(), info);
        // Written before records had formats.
        let old = serde_json::to_vec(&info).unwrap();
        assert_eq!(decode::<MonitorInfo>(&old).unwrap(), info);
        let newer = br#"{"format": 2, "id": "m1", "url": null}"#;
        let e = decode::<MonitorInfo>(newer).unwrap_err();
        assert!(e.to_string().contains("newer Shoal"), "{e}");
        assert!(decode::<MonitorInfo>(b"[1]").is_err());
    }
}
