//! The proxy's view of the cluster: the placement map and the live nodes,
//! followed through registry watches, plus a cache of which node leads each
//! bucket.
//!
//! The map says which nodes hold a bucket; only the group knows which of
//! them leads it now. The cache is a hint learned from the nodes' own
//! answers (a `307` names the leader, a committed write came from it) and
//! dropped when that node stops answering. A wrong hint costs one extra hop:
//! the node it names redirects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_registry::Registry;
use shoal_registry::directory::{Directory, directory_changed, read_directory};
use shoal_types::api::NodeInfo;
use shoal_types::{BucketId, NodeId};
use tokio::sync::watch;

/// A node to send a request to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The node.
    pub node: NodeId,
    /// Its internal URL (`local_node_url`), without a trailing slash.
    pub url: String,
}

/// The placement view and the leader cache.
pub struct View {
    directory: watch::Receiver<Directory>,
    /// The cached leaders, shared so that a request takes one without copying.
    leaders: Mutex<HashMap<BucketId, Arc<Target>>>,
}

impl View {
    /// A view fed by `directory` (see [`follow`]).
    pub fn new(directory: watch::Receiver<Directory>) -> View {
        View { directory, leaders: Mutex::new(HashMap::new()) }
    }

    /// The latest map and nodes.
    pub fn directory(&self) -> Directory {
        self.directory.borrow().clone()
    }

    /// Whether a placement map has been read.
    pub fn has_map(&self) -> bool {
        self.directory.borrow().map.is_some()
    }

    fn cached(&self, bucket: BucketId) -> Option<Arc<Target>> {
        self.leaders.lock().unwrap_or_else(|e| e.into_inner()).get(&bucket).cloned()
    }

    /// The cached leader of `bucket`.
    pub fn leader(&self, bucket: BucketId) -> Option<NodeId> {
        self.cached(bucket).map(|t| t.node.clone())
    }

    /// The cached leader of `bucket`, if it is live at the address cached.
    pub fn live_leader(&self, bucket: BucketId) -> Option<Arc<Target>> {
        let leader = self.cached(bucket)?;
        let dir = self.directory.borrow();
        let info = dir.nodes.get(&leader.node)?;
        (info.local_node_url.trim_end_matches('/') == leader.url).then_some(leader)
    }

    /// Remembers `node` as the leader of `bucket` (if it is a live node).
    pub fn set_leader(&self, bucket: BucketId, node: NodeId) {
        if self.cached(bucket).is_some_and(|t| t.node == node) {
            return;
        }
        if let Some(target) = self.live_node(&node) {
            self.set_leader_target(bucket, &target);
        }
    }

    /// Remembers `target` as the leader of `bucket`.
    pub fn set_leader_target(&self, bucket: BucketId, target: &Arc<Target>) {
        let mut leaders = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        if leaders.get(&bucket).is_none_or(|t| t != target) {
            leaders.insert(bucket, target.clone());
        }
    }

    /// Forgets the leader of `bucket` if it is `node`.
    pub fn forget_leader(&self, bucket: BucketId, node: &NodeId) {
        let mut leaders = self.leaders.lock().unwrap_or_else(|e| e.into_inner());
        if leaders.get(&bucket).is_some_and(|t| &t.node == node) {
            leaders.remove(&bucket);
        }
    }

    /// The nodes to try for `bucket`, best first.
    pub fn candidates(&self, bucket: BucketId) -> Vec<Arc<Target>> {
        candidates(&self.directory.borrow(), bucket, self.leader(bucket).as_ref())
    }

    /// The live replicas of `bucket` in the map's order, whoever leads: a
    /// choice that stays put while leadership moves.
    pub fn replicas(&self, bucket: BucketId) -> Vec<Arc<Target>> {
        candidates(&self.directory.borrow(), bucket, None)
    }

    /// The node whose internal URL starts `url` (e.g. a redirect's target).
    pub fn node_at(&self, url: &str) -> Option<NodeId> {
        node_at(&self.directory.borrow().nodes, url)
    }

    /// The live node `node`.
    pub fn live_node(&self, node: &NodeId) -> Option<Arc<Target>> {
        self.directory.borrow().nodes.get(node).map(|info| target(node, info))
    }
}

/// Node `id` at its URL (without a trailing `/`).
fn target(id: &NodeId, info: &NodeInfo) -> Arc<Target> {
    Arc::new(Target { node: id.clone(), url: info.local_node_url.trim_end_matches('/').into() })
}

/// The nodes to try for `bucket`: the cached leader first (if it is live),
/// then the map's replicas that are live, in the map's order (the first
/// replica is the one the nodes make leader when they can).
pub fn candidates(dir: &Directory, bucket: BucketId, leader: Option<&NodeId>) -> Vec<Arc<Target>> {
    let mut out: Vec<Arc<Target>> = Vec::new();
    let mut push = |id: &NodeId| {
        if out.iter().any(|t| &t.node == id) {
            return;
        }
        if let Some(info) = dir.nodes.get(id) {
            out.push(target(id, info));
        }
    };
    if let Some(l) = leader {
        push(l);
    }
    if let Some(map) = &dir.map {
        for id in map.replicas(bucket) {
            push(id);
        }
    }
    out
}

/// The node whose `local_node_url` is a prefix of `url` at a path boundary.
pub fn node_at(nodes: &std::collections::BTreeMap<NodeId, NodeInfo>, url: &str) -> Option<NodeId> {
    nodes.iter().find_map(|(id, info)| {
        let base = info.local_node_url.trim_end_matches('/');
        let rest = url.strip_prefix(base)?;
        (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')).then(|| id.clone())
    })
}

/// Keeps `directory` up to date with the registry until `shutdown`: reads
/// the nodes and the map, then waits for a change of either (or `interval`,
/// as a safety net against a lost watch) and reads again.
pub async fn follow(
    registry: Arc<dyn Registry>,
    directory: watch::Sender<Directory>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        match read_directory(registry.as_ref()).await {
            Ok((dir, revision)) => {
                directory.send_replace(dir);
                tokio::select! {
                    _ = directory_changed(registry.as_ref(), revision, interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the placement map; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn info(url: &str) -> NodeInfo {
        NodeInfo {
            node_url: format!("{url}/public"),
            local_node_url: url.to_string(),
            zone: "z".into(),
            capacity: 1,
            version: "0".into(),
            registered_at: String::new(),
            instance: String::new(),
        }
    }

    fn nodes() -> BTreeMap<NodeId, NodeInfo> {
        [
            (NodeId("a".into()), info("http://127.0.0.1:7001")),
            (NodeId("b".into()), info("http://127.0.0.1:70011/")),
            (NodeId("c".into()), info("http://127.0.0.1:7003")),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn a_redirect_maps_back_to_its_node_at_a_path_boundary() {
        let n = nodes();
        assert_eq!(node_at(&n, "http://127.0.0.1:7001/v1/bases/x"), Some(NodeId("a".into())));
        // A port that merely starts with another node's port is another node.
        assert_eq!(node_at(&n, "http://127.0.0.1:70011/v1/bases/x"), Some(NodeId("b".into())));
        assert_eq!(node_at(&n, "http://127.0.0.1:7003?x=1"), Some(NodeId("c".into())));
        assert_eq!(node_at(&n, "http://127.0.0.1:7009/v1"), None);
        assert_eq!(node_at(&n, "http://127.0.0.1:70"), None);
    }

    #[test]
    fn candidates_put_the_cached_leader_first_and_skip_dead_nodes() {
        let mut map = shoal_types::placement::PlacementMap::empty(
            3,
            shoal_types::placement::Topology::Dynamic,
        );
        let bucket = BucketId(7);
        map.buckets[7] = vec![NodeId("c".into()), NodeId("x".into()), NodeId("a".into())];
        let dir = Directory { map: Some(map), nodes: nodes() };
        let ids = |v: Vec<Arc<Target>>| v.into_iter().map(|t| t.node.0.clone()).collect::<Vec<_>>();
        assert_eq!(ids(candidates(&dir, bucket, None)), ["c", "a"]);
        assert_eq!(ids(candidates(&dir, bucket, Some(&NodeId("a".into())))), ["a", "c"]);
        // A cached leader that is not live is not tried.
        assert_eq!(ids(candidates(&dir, bucket, Some(&NodeId("x".into())))), ["c", "a"]);
        // Trailing slashes are cut so paths can be appended.
        let b = candidates(&dir, bucket, Some(&NodeId("b".into())));
        assert_eq!(b[0].url, "http://127.0.0.1:70011");
        assert!(candidates(&Directory::default(), bucket, None).is_empty());
    }
}
