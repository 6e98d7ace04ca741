//! The monitor service: campaign, and while active, keep the placement map.
//!
//! Any number of monitors run; the registry's election makes exactly one of
//! them active. The active monitor loops over:
//!
//! 1. read the live nodes (`nodes/`), the map (`placement`) and any pending
//!    rebalance request (`rebalance`);
//! 2. decide: with no map yet, or on a rebalance request, compute a new map;
//!    in `dynamic` topology also whenever the live nodes differ from the
//!    map's inputs (a node counts as gone only when its lease has expired,
//!    i.e. `node_ttl` after it stopped renewing);
//! 3. write the map (and consume the request) in one transaction that
//!    compares the map's mod revision with the one read and this monitor's
//!    election key with the one it won: two monitors can never overwrite
//!    each other, and a deposed monitor can write nothing;
//! 4. wait for a change under `nodes/`, `placement`, `rebalance` or `drained/` from the
//!    revision read, so nothing between the read and the wait is missed.
//!
//! It also keeps `members/{node}`: every node it has seen, whether it is
//! live and since when, which is what status shows for dead nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_placement::NodeSpec;
use shoal_registry::{
    Compare, CompareOp, Election, Leader, Registry, Revision, Session, SessionOptions, Txn, TxnOp,
    WatchMessage, directory, keys,
};
use shoal_types::NodeId;
use shoal_types::api::{Member, MonitorInfo, NodeInfo};
use shoal_types::placement::{PlacementMap, Topology};
use tokio::sync::watch;

use crate::{Error, Result};

/// How a monitor behaves.
#[derive(Clone, Debug)]
pub struct MonitorOptions {
    /// This monitor's id, shown in status.
    pub id: String,
    /// Its HTTP URL, if it serves one.
    pub url: Option<String>,
    /// Replicas per bucket.
    pub replication_factor: usize,
    /// `dynamic`: follow node changes; `static`: change only on a rebalance request.
    pub topology: Topology,
    /// The TTL of the monitor's session: how long after it dies another
    /// monitor can take over.
    pub session_ttl: Duration,
    /// How long to wait after a change before acting, so that a burst of
    /// changes (several nodes starting) gives one new map.
    pub settle: Duration,
    /// The wait before retrying after a registry failure.
    pub retry_interval: Duration,
    /// How many nodes must be live before the first map is made (at least
    /// one); a rebalance request makes it from the nodes there are.
    pub initial_node_count: usize,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            id: "monitor".into(),
            url: None,
            replication_factor: 3,
            topology: Topology::Dynamic,
            session_ttl: Duration::from_secs(90),
            settle: Duration::from_millis(200),
            retry_interval: Duration::from_millis(500),
            initial_node_count: 1,
        }
    }
}

/// Runs a monitor until `shutdown` turns true. Registry failures are logged
/// and retried; they never end the service.
pub async fn run(
    registry: Arc<dyn Registry>,
    options: MonitorOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    if options.replication_factor == 0 {
        tracing::error!("replication factor 0: the monitor will not run");
        return;
    }
    while !*shutdown.borrow() {
        match term(&registry, &options, &mut shutdown).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "monitor lost its term; campaigning again");
                tokio::select! {
                    _ = tokio::time::sleep(options.retry_interval) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

/// One session: campaign, lead until the session or leadership ends.
async fn term(
    registry: &Arc<dyn Registry>,
    options: &MonitorOptions,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<()> {
    let session = Arc::new(
        Session::new(registry.clone(), SessionOptions { ttl: options.session_ttl }).await?,
    );
    let election = Election::new(session.clone(), keys::MONITOR_ELECTION);
    let value =
        directory::encode(&MonitorInfo { id: options.id.clone(), url: options.url.clone() })?;
    let leader = tokio::select! {
        r = election.campaign(&value) => r?,
        reason = session.lost() => return Err(Error::Registry(shoal_registry::Error::SessionLost(reason))),
        _ = shutdown.changed() => {
            let _ = election.resign().await;
            return Ok(());
        }
    };
    tracing::info!(id = %options.id, term = %leader.revision, "this monitor is now active");
    let result = tokio::select! {
        r = lead(registry, &leader, options) => r,
        reason = session.lost() => Err(Error::Registry(shoal_registry::Error::SessionLost(reason))),
        _ = shutdown.changed() => Ok(()),
    };
    // Hand over at once on a clean stop; after a failure the lease expires.
    if result.is_ok() {
        let _ = election.resign().await;
        // The election holds the other reference to the session.
        drop(election);
        if let Ok(s) = Arc::try_unwrap(session) {
            let _ = s.close().await;
        }
    }
    result
}

/// What one pass read.
struct Snapshot {
    revision: Revision,
    nodes: BTreeMap<NodeId, NodeInfo>,
    map: Option<(PlacementMap, Revision)>,
    rebalance: Option<Revision>,
    members: BTreeMap<NodeId, Member>,
    drained: std::collections::BTreeSet<NodeId>,
}

async fn snapshot(registry: &Arc<dyn Registry>) -> Result<Snapshot> {
    // One listing of the whole namespace would read everything at one
    // revision, but it holds every status report too; the transaction's
    // compares make separate reads safe.
    let (nodes, revision) = directory::live_nodes(registry.as_ref()).await?;
    let map = directory::placement(registry.as_ref()).await?;
    let rebalance = registry.get(keys::REBALANCE).await?.map(|kv| kv.mod_revision);
    let members = directory::members(registry.as_ref()).await?;
    let drained = directory::drained(registry.as_ref()).await?;
    Ok(Snapshot { revision, nodes, map, rebalance, members, drained })
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The member records that change given the live nodes.
fn member_updates(s: &Snapshot) -> Vec<(NodeId, Member)> {
    let mut out = Vec::new();
    for (id, info) in &s.nodes {
        match s.members.get(id) {
            Some(m) if m.live && m.info == *info => {}
            Some(m) if m.live => out.push((
                id.clone(),
                Member { info: info.clone(), live: true, since: m.since.clone() },
            )),
            _ => out.push((id.clone(), Member { info: info.clone(), live: true, since: now() })),
        }
    }
    for (id, m) in &s.members {
        if m.live && !s.nodes.contains_key(id) {
            out.push((id.clone(), Member { info: m.info.clone(), live: false, since: now() }));
        }
    }
    out
}

/// The nodes the map may place replicas on: the live ones not drained.
fn specs(s: &Snapshot) -> Vec<NodeSpec> {
    s.nodes
        .iter()
        .filter(|(id, _)| !s.drained.contains(*id))
        .map(|(id, info)| NodeSpec {
            id: id.clone(),
            zone: info.zone.clone(),
            capacity: info.capacity,
        })
        .collect()
}

/// Leads until an error: keeps the map in step with the nodes.
async fn lead(
    registry: &Arc<dyn Registry>,
    leader: &Leader,
    options: &MonitorOptions,
) -> Result<()> {
    loop {
        let s = snapshot(registry).await?;
        let previous = s.map.as_ref().map(|(m, _)| m);
        let requested = s.rebalance.is_some();
        let settings_changed = previous.is_some_and(|m| {
            m.replication_factor != options.replication_factor || m.topology != options.topology
        });
        // The first map waits for the expected nodes (unless asked for), so
        // that a monitor started before them does not place every bucket on
        // the first one to come; in static topology that map would stay.
        let expected = options.initial_node_count.max(1);
        let specs = specs(&s);
        let waiting = previous.is_none() && s.nodes.len() < expected && !requested;
        // A drain moves replicas in either topology.
        let draining = previous.is_some_and(|m| {
            m.buckets.iter().any(|replicas| replicas.iter().any(|n| s.drained.contains(n)))
        });
        let all_drained = specs.is_empty() && !s.nodes.is_empty();
        if all_drained {
            tracing::warn!("every live node is drained: the map stays as it is");
        }
        if waiting && expected > 1 {
            tracing::info!(
                live = s.nodes.len(),
                expected,
                "waiting for the expected nodes before the first placement map"
            );
        }
        let compute = !waiting
            && !all_drained
            && (previous.is_none()
                || requested
                || settings_changed
                || draining
                || options.topology == Topology::Dynamic);
        let next = compute.then(|| {
            shoal_placement::place(previous, &specs, options.replication_factor, options.topology)
        });
        let write_map = match (&next, previous) {
            (Some(n), Some(p)) => n.epoch != p.epoch,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let members = member_updates(&s);
        if write_map || requested || !members.is_empty() {
            let mut compares = vec![
                Compare::create_revision(leader.key.clone(), CompareOp::Equal, leader.revision),
                Compare::mod_revision(
                    keys::PLACEMENT,
                    CompareOp::Equal,
                    s.map.as_ref().map(|(_, r)| *r).unwrap_or_default(),
                ),
            ];
            let mut ops = Vec::new();
            if let (true, Some(n)) = (write_map, &next) {
                ops.push(TxnOp::put(keys::PLACEMENT, n.encode(), None));
            }
            if let Some(r) = s.rebalance {
                compares.push(Compare::mod_revision(keys::REBALANCE, CompareOp::Equal, r));
                ops.push(TxnOp::delete(keys::REBALANCE));
            }
            for (id, m) in &members {
                let value = directory::encode(m)?;
                ops.push(TxnOp::put(keys::member(id), value, None));
            }
            let resp = registry.txn(Txn::new().when(compares).and_then(ops)).await?;
            if !resp.succeeded {
                // Someone changed what we read, or we are no longer leader:
                // the next pass (or term) finds out which.
                if registry
                    .get(&leader.key)
                    .await?
                    .is_none_or(|kv| kv.create_revision != leader.revision)
                {
                    return Err(Error::Deposed);
                }
                continue;
            }
            if let (true, Some(n)) = (write_map, &next) {
                let moved = previous.map(|p| shoal_placement::moves(p, n).len()).unwrap_or(0);
                tracing::info!(
                    epoch = n.epoch,
                    nodes = s.nodes.len(),
                    moved,
                    rebalance = requested,
                    "placement map written"
                );
            }
            // Our own write is a change to wait for; read again.
            continue;
        }
        wait_for_change(registry, s.revision, options.settle).await?;
    }
}

/// Waits until something under `nodes/`, `placement`, `rebalance` or `drained/` changes
/// after `revision`, then lets a burst of changes settle.
async fn wait_for_change(
    registry: &Arc<dyn Registry>,
    revision: Revision,
    settle: Duration,
) -> Result<()> {
    let from = Revision(revision.0 + 1);
    let mut nodes = registry.watch_prefix(keys::NODES, from).await?;
    let mut placement = registry.watch_prefix(keys::PLACEMENT, from).await?;
    let mut rebalance = registry.watch_prefix(keys::REBALANCE, from).await?;
    let mut drained = registry.watch_prefix(keys::DRAINED, from).await?;
    let message = tokio::select! {
        m = nodes.next() => m,
        m = placement.next() => m,
        m = rebalance.next() => m,
        m = drained.next() => m,
    };
    match message {
        Some(Ok(WatchMessage::Event(_))) | Some(Ok(WatchMessage::Resync { .. })) | None => {}
        Some(Err(e)) => return Err(e.into()),
    }
    tokio::time::sleep(settle).await;
    Ok(())
}
