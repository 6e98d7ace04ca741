//! The key layout of Shoal's control plane, relative to the namespace.
//!
//! ```text
//! nodes/{node_id}    NodeInfo, leased by the node's session
//! placement          the placement map, written by the monitor with a CAS
//! monitor/leader     the monitor election (candidates under monitor/leader/)
//! rebalance          a rebalance request for the monitor
//! status/{node_id}   what the node hosts and leads, leased
//! drained/{node_id}  present while the node is drained (the map places nothing there)
//! members/{node_id}  a node the active monitor has seen (kept after it dies, until forgotten)
//! groups/{bucket}    a bucket's Raft group: its id and first voters, written once
//! ```
//! Builders live here so that no crate spells a key by hand.

use shoal_types::{BucketId, NodeId};

/// The prefix of node registrations.
pub const NODES: &[u8] = b"nodes/";
/// The placement map.
pub const PLACEMENT: &[u8] = b"placement";
/// The name of the monitor election.
pub const MONITOR_ELECTION: &[u8] = b"monitor/leader";
/// A pending rebalance request.
pub const REBALANCE: &[u8] = b"rebalance";
/// The prefix of node status reports.
pub const STATUS: &[u8] = b"status/";
/// The prefix of drain marks.
pub const DRAINED: &[u8] = b"drained/";
/// The prefix of member records.
pub const MEMBERS: &[u8] = b"members/";
/// The prefix of group claims.
pub const GROUPS: &[u8] = b"groups/";

/// The registration key of `node`.
pub fn node(node: &NodeId) -> Vec<u8> {
    [NODES, node.0.as_bytes()].concat()
}

/// The status key of `node`.
pub fn status(node: &NodeId) -> Vec<u8> {
    [STATUS, node.0.as_bytes()].concat()
}

/// The drain mark of `node`.
pub fn drained(node: &NodeId) -> Vec<u8> {
    [DRAINED, node.0.as_bytes()].concat()
}

/// The member record of `node`.
pub fn member(node: &NodeId) -> Vec<u8> {
    [MEMBERS, node.0.as_bytes()].concat()
}

/// The node id of a member record's key, if it is one.
pub fn member_of(key: &[u8]) -> Option<NodeId> {
    let rest = key.strip_prefix(MEMBERS)?;
    std::str::from_utf8(rest).ok().filter(|s| !s.is_empty()).map(|s| NodeId(s.to_string()))
}

/// The claim of `bucket`'s Raft group.
pub fn group(bucket: BucketId) -> Vec<u8> {
    format!("groups/{bucket}").into_bytes()
}

/// The node id of a registration, status or drain key, if it is one.
pub fn node_of(key: &[u8]) -> Option<NodeId> {
    let rest = key
        .strip_prefix(NODES)
        .or_else(|| key.strip_prefix(STATUS))
        .or_else(|| key.strip_prefix(DRAINED))?;
    std::str::from_utf8(rest).ok().filter(|s| !s.is_empty()).map(|s| NodeId(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keys_round_trip() {
        let id = NodeId("node-01".into());
        assert_eq!(node(&id), b"nodes/node-01");
        assert_eq!(node_of(&node(&id)), Some(id.clone()));
        assert_eq!(node_of(&status(&id)), Some(id.clone()));
        assert_eq!(node_of(&drained(&id)), Some(id));
        assert_eq!(node_of(b"placement"), None);
        assert_eq!(member(&NodeId("n1".into())), b"members/n1");
        assert_eq!(member_of(b"members/n1"), Some(NodeId("n1".into())));
        assert_eq!(member_of(b"nodes/n1"), None);
        assert!(group(BucketId(0x0a)).starts_with(GROUPS));
    }
}
