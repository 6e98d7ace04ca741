//! The HTTP API's request and response bodies (`/v1`). Servers, the client
//! library and the CLI all use these types, so the wire format lives in one place.
//!
//! SQL values travel as JSON: `null`, numbers (integers stay integers), strings,
//! booleans (stored as 0/1) and blobs as `{"base64": "..."}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{BaseId, BucketId, ErrorBody, NodeId};

/// `POST /v1/bases`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBaseRequest {
    /// The id to create; a random UUID when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<BaseId>,
    /// A name for humans; need not be unique.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A base as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseInfo {
    /// The base's id.
    pub id: BaseId,
    /// Its name, if it was given one.
    pub name: Option<String>,
    /// Its bucket: the first two hex characters of the id.
    pub bucket: BucketId,
    /// When it was created, RFC 3339 in UTC.
    pub created_at: String,
}

/// `GET /v1/bases`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseList {
    /// One page of bases, ordered by id.
    pub bases: Vec<BaseInfo>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<BaseId>,
}

/// Statement parameters: positional (`?`, `?NNN`) or named (`:name`, `@name`, `$name`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Params {
    /// `[v1, v2, ...]` bound to `?1`, `?2`, ...
    Positional(Vec<Value>),
    /// `{"name": v}` bound to `:name` (or `@name`, `$name`).
    Named(BTreeMap<String, Value>),
}

impl Default for Params {
    fn default() -> Self {
        Params::Positional(Vec::new())
    }
}

impl Params {
    /// Whether there are no parameters.
    pub fn is_empty(&self) -> bool {
        match self {
            Params::Positional(v) => v.is_empty(),
            Params::Named(m) => m.is_empty(),
        }
    }
}

/// One SQL statement with its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// The SQL text: exactly one statement.
    pub sql: String,
    /// Its parameters.
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub params: Params,
}

fn default_true() -> bool {
    true
}

/// `POST /v1/bases/{id}/execute`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecuteRequest {
    /// The statements, applied in order.
    pub statements: Vec<Statement>,
    /// True (default): all statements apply or none does. False: each statement
    /// applies on its own and a failing one reports its error in its result.
    #[serde(default = "default_true")]
    pub transaction: bool,
}

/// The outcome of one statement of an execute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecuteResult {
    /// Rows inserted, updated or deleted.
    pub rows_affected: u64,
    /// The rowid of the last row inserted by this statement or an earlier
    /// one of the same request; 0 if none inserted a row yet.
    pub last_insert_rowid: i64,
    /// Set only when `transaction` was false and this statement failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::ErrorDetail>,
}

/// The answer to an execute.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecuteResponse {
    /// One result per statement.
    pub results: Vec<ExecuteResult>,
    /// The log index at which the write was applied.
    pub index: u64,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Read this replica's state, which may be stale.
    None,
    /// Read the leader's state.
    Leader,
    /// Confirm leadership with a quorum, then read (the default).
    #[default]
    Linearizable,
}

/// `POST /v1/bases/{id}/query`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// One read-only statement.
    pub sql: String,
    /// Its parameters.
    #[serde(default, skip_serializing_if = "Params::is_empty")]
    pub params: Params,
    /// How fresh the answer must be.
    #[serde(default)]
    pub consistency: Consistency,
}

/// The answer to a query.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryResponse {
    /// Column names.
    pub columns: Vec<String>,
    /// Declared column types (empty for expressions).
    pub types: Vec<String>,
    /// The rows, each with one value per column.
    pub rows: Vec<Vec<Value>>,
}

/// A column of a table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// Declared type, possibly empty.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether NULL is refused.
    pub notnull: bool,
    /// The default value as SQL text, if any.
    pub default: Option<String>,
    /// Position in the primary key (1-based), 0 when not part of it.
    pub pk: u32,
}

/// A table of a base.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// Table name.
    pub name: String,
    /// Its columns, in order.
    pub columns: Vec<ColumnInfo>,
}

/// `GET /v1/bases/{id}/tables`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableList {
    /// The user tables, by name.
    pub tables: Vec<TableInfo>,
}

/// A row: column name to value. The row id is under the key `_rowid`.
pub type Row = serde_json::Map<String, Value>;

/// The key under which rows carry their rowid.
pub const ROWID_KEY: &str = "_rowid";

/// `POST /v1/bases/{id}/tables/{table}/rows`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsertRowsRequest {
    /// The rows to insert, in one transaction.
    pub rows: Vec<Row>,
    /// The `Idempotency-Key` of an earlier write to the same base that must
    /// have been applied before these rows are: if it was not, nothing is
    /// inserted and the answer is `conflict`. A client with several batches
    /// in flight chains them this way to keep their order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// The answer to a batch insert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InsertRowsResponse {
    /// The rowid given to each row, in order.
    pub rowids: Vec<i64>,
    /// The log index at which the write was applied.
    pub index: u64,
}

/// `PATCH /v1/bases/{id}/tables/{table}/rows/{rowid}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRowRequest {
    /// The columns to change.
    pub values: Row,
}

/// `GET /v1/bases/{id}/tables/{table}/rows`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowList {
    /// One page of rows; each has `_rowid`.
    pub rows: Vec<Row>,
    /// The page size asked for.
    pub limit: u64,
    /// The offset asked for.
    pub offset: u64,
}

/// The answer to a row update or delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResponse {
    /// The log index at which the write was applied.
    pub index: u64,
}

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// "ok".
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// What a node registers under `nodes/{node_id}` (leased by its session).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The URL end users and browsers reach this node at.
    pub node_url: String,
    /// The URL other nodes and proxies reach this node at.
    pub local_node_url: String,
    /// The failure zone (rack, room, region) the node is in.
    pub zone: String,
    /// The node's relative capacity: a node of capacity 2 gets twice the
    /// replicas of a node of capacity 1.
    pub capacity: u32,
    /// The Shoal version the node runs.
    pub version: String,
    /// When this registration was made, RFC 3339.
    pub registered_at: String,
    /// Names the node's data directory (made when the directory was
    /// first used): a registration of the same node id with another
    /// instance belongs to another process.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
}

/// What a node reports under `status/{node_id}` (leased): the buckets it
/// has taken on from the placement map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The epoch of the placement map the node last reconciled with.
    pub epoch: u64,
    /// The buckets the node hosts: it holds a replica that votes in the
    /// bucket's group (a replica still catching up is not counted).
    pub buckets: Vec<BucketId>,
    /// The buckets whose group this node leads.
    #[serde(default)]
    pub leads: Vec<BucketId>,
}

/// What the monitor remembers of every node it has seen, under
/// `members/{node_id}`: whether it is live and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's last registration.
    pub info: NodeInfo,
    /// Whether the node is registered now.
    pub live: bool,
    /// When it became live or stopped being live, RFC 3339.
    pub since: String,
}

/// The active monitor, as its election value says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorInfo {
    /// The monitor's id.
    pub id: String,
    /// Its HTTP URL, if it serves one.
    pub url: Option<String>,
}

/// One node in the cluster status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node_id: crate::NodeId,
    /// Whether it is registered now.
    pub live: bool,
    /// Since when it is live or not, RFC 3339, when known.
    pub since: Option<String>,
    /// Its public URL.
    pub node_url: String,
    /// Its zone.
    pub zone: String,
    /// Its capacity.
    pub capacity: u32,
    /// Replicas the placement map gives it.
    pub replicas: usize,
    /// Replicas it reports hosting.
    pub hosted: usize,
    /// Whether it is drained: the map places nothing on it.
    #[serde(default)]
    pub drained: bool,
}

/// What a drain, undrain or forget did (`/v1/cluster/nodes/{id}...`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChange {
    /// The node.
    pub node_id: crate::NodeId,
    /// Whether it is drained now.
    pub drained: bool,
    /// Whether it was removed from the member list.
    pub forgotten: bool,
}

/// A replica the map gives a node that the node does not host yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingMove {
    /// The bucket.
    pub bucket: BucketId,
    /// The node that is to host it.
    pub node_id: crate::NodeId,
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The registry, e.g. `etcd://h1:2379,h2:2379 (namespace shoal)`.
    pub registry: String,
    /// The active monitor, if one is elected.
    pub monitor: Option<MonitorInfo>,
    /// The placement map's epoch (0: no map yet).
    pub epoch: u64,
    /// `static` or `dynamic`.
    pub topology: String,
    /// Replicas per bucket the map aims for.
    pub replication_factor: usize,
    /// Every node the map uses or the registry knows, by id.
    pub nodes: Vec<NodeStatus>,
    /// Buckets with fewer live replicas than the replication factor allows.
    pub under_replicated: Vec<BucketId>,
    /// Buckets with at least one replica on a node that is not live.
    pub on_dead_nodes: Vec<BucketId>,
    /// Replicas placed but not yet hosted.
    pub moves_in_progress: Vec<PendingMove>,
    /// Whether a rebalance request is waiting for the monitor.
    pub rebalance_pending: bool,
}

/// One replica of a bucket as its node's Raft engine sees it
/// (`GET /v1/node/buckets`, and per replica in `GET /v1/cluster/buckets`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The bucket.
    pub bucket: BucketId,
    /// The node holding the replica.
    pub node_id: NodeId,
    /// `leader`, `follower`, `candidate`, `pre-candidate` or `learner`.
    pub role: String,
    /// The replica's current term.
    pub term: u64,
    /// The highest log index it knows committed.
    pub commit: u64,
    /// The highest log index it has applied.
    pub applied: u64,
    /// The last index in its log.
    pub last_index: u64,
    /// How far its applied index is behind the leader's commit index, when
    /// the leader answered too.
    #[serde(default)]
    pub lag: Option<u64>,
}

/// `GET /v1/node/buckets`: the replicas of the node asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReplicas {
    /// The node.
    pub node_id: NodeId,
    /// Its replicas, by bucket.
    pub replicas: Vec<ReplicaState>,
}

/// One bucket in `GET /v1/cluster/buckets`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketStatus {
    /// The bucket.
    pub bucket: BucketId,
    /// The nodes the placement map gives it, preferred first.
    pub replicas: Vec<NodeId>,
    /// The replica that leads its group, as the replicas report it (the
    /// leader of the highest term).
    pub leader: Option<NodeId>,
    /// The leader's term (0 when no leader is known).
    pub term: u64,
    /// A replica is placed but not hosted yet.
    pub moving: bool,
    /// Fewer live replicas than the replication factor allows.
    pub under_replicated: bool,
    /// A replica is on a node that is not live.
    pub on_dead_nodes: bool,
    /// Each replica that answered, whether or not the map still names it.
    pub states: Vec<ReplicaState>,
}

/// `GET /v1/cluster/buckets`: the placement map with every bucket's Raft
/// state, read from the live nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketsStatus {
    /// The placement map's epoch (0: no map yet).
    pub epoch: u64,
    /// Replicas per bucket the map aims for.
    pub replication_factor: usize,
    /// The 256 buckets in order (none before the first map).
    pub buckets: Vec<BucketStatus>,
    /// Live nodes that did not answer in time: their replicas' states are
    /// missing.
    pub unreachable: Vec<NodeId>,
}

/// The answer to `POST /v1/cluster/rebalance`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceRequest {
    /// When the request was made, RFC 3339.
    pub requested_at: String,
    /// The map epoch when it was made; the monitor's answer has a later one.
    pub epoch: u64,
}

/// `GET /v1/bases/{id}/checksum`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksum {
    /// SHA-256 of the base's schema and rows, hex.
    pub checksum: String,
    /// The bucket's last applied log index on the replica that answered.
    pub applied_index: u64,
}

/// A node as a client sees it: its id and the URL clients and browsers
/// reach it at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRef {
    /// The node's id.
    pub node_id: NodeId,
    /// Its public URL (`node_url`, never the internal one).
    pub node_url: String,
}

/// `GET /v1/bases/{id}/location`: where the bucket of a base id lives.
/// The answer does not say whether the base exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseLocation {
    /// The bucket the id maps to.
    pub bucket: BucketId,
    /// The replica leading the bucket's Raft group, when one is known.
    pub leader: Option<NodeRef>,
    /// Every replica the placement map gives the bucket, preferred first.
    pub replicas: Vec<NodeRef>,
    /// The epoch of the placement map this answer comes from.
    pub epoch: u64,
}

/// What a change-feed event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// A row was inserted: `table`, `rowid` and `row` are set.
    Insert,
    /// A row was updated: `table`, `rowid` and `row` (new values) are set.
    Update,
    /// A row was deleted: `table` and `rowid` are set (no `row`: SQLite
    /// reports a delete once the row is gone).
    Delete,
    /// The schema changed: `sql` holds the statement.
    Ddl,
    /// The base was dropped; nothing follows.
    BaseDropped,
}

/// One committed change of a base, as the change feed sends it. All the
/// events of one write share its log `index` and arrive together, in the
/// order the write made them.
///
/// `R` is how the row's values are held: a [`Row`] for whoever reads the
/// feed, [`RowText`] where the server keeps them (the same JSON on the
/// wire).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeEvent<R = Row> {
    /// The log index of the write that made the change.
    pub index: u64,
    /// What happened.
    pub op: ChangeOp,
    /// The table, for row events and DDL on a table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// The row's rowid, for row events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rowid: Option<i64>,
    /// The row's values (without `_rowid`), for row events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<R>,
    /// The statement, for DDL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

/// A row's values as the text of a JSON object (column name to value), as
/// the server keeps them for the change feed: written once when the change
/// is captured, sent as it is to every subscriber, and one allocation to
/// keep and to drop rather than one per column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowText(Vec<u8>);

impl RowText {
    /// Wraps `text`, which should be a JSON object in UTF-8. It is not
    /// checked here (its maker writes it); serializing checks it and fails
    /// rather than send anything that is not JSON.
    pub fn from_json(text: impl Into<Vec<u8>>) -> RowText {
        RowText(text.into())
    }

    /// The text of `row`.
    pub fn from_row(row: &Row) -> RowText {
        RowText(Value::Object(row.clone()).to_string().into_bytes())
    }

    /// The JSON text's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The row's values, parsed.
    pub fn to_row(&self) -> serde_json::Result<Row> {
        serde_json::from_slice(&self.0)
    }
}

impl Serialize for RowText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_slice(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RowText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RowText, D::Error> {
        Ok(RowText::from_row(&Row::deserialize(d)?))
    }
}

/// `{"resync": true, "index": N}`: the changes after the index asked for
/// are no longer retained; re-read the base and resume after `index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resync {
    /// Always true.
    pub resync: bool,
    /// The base's latest applied index on the replica that answered.
    pub index: u64,
}

/// One message of the change feed: a change, a resync, or an error after
/// which the server closes the feed (e.g. a subscriber too slow to keep up).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FeedMessage<R = Row> {
    /// A committed change.
    Change(ChangeEvent<R>),
    /// Resync needed.
    Resync(Resync),
    /// The feed ends with this error.
    Error(ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_messages_tell_themselves_apart() {
        let change = r#"{"index":7,"op":"insert","table":"t","rowid":1,"row":{"a":1}}"#;
        let FeedMessage::<Row>::Change(e) = serde_json::from_str(change).expect("change") else {
            panic!("a change parsed as something else");
        };
        assert_eq!((e.index, e.op, e.rowid), (7, ChangeOp::Insert, Some(1)));
        assert_eq!(serde_json::to_string(&FeedMessage::Change(e)).expect("encode"), change);
        let resync: FeedMessage =
            serde_json::from_str(r#"{"resync":true,"index":9}"#).expect("resync");
        assert_eq!(resync, FeedMessage::Resync(Resync { resync: true, index: 9 }));
        let error: FeedMessage =
            serde_json::from_str(r#"{"error":{"code":"unavailable","message":"slow"}}"#)
                .expect("error");
        assert!(matches!(error, FeedMessage::Error(_)));
        let dropped = r#"{"index":3,"op":"base_dropped"}"#;
        assert!(matches!(
            serde_json::from_str::<FeedMessage>(dropped).expect("dropped"),
            FeedMessage::Change(ChangeEvent { op: ChangeOp::BaseDropped, .. })
        ));
    }

    #[test]
    fn a_row_kept_as_text_is_sent_as_the_same_json() {
        let change = r#"{"index":7,"op":"update","table":"t","rowid":1,"row":{"a":1,"b":"x\"y"}}"#;
        let parsed: ChangeEvent = serde_json::from_str(change).expect("change");
        let row = parsed.row.clone().expect("a row");
        let kept = ChangeEvent {
            index: parsed.index,
            op: parsed.op,
            table: parsed.table.clone(),
            rowid: parsed.rowid,
            row: Some(RowText::from_json(r#"{"a":1,"b":"x\"y"}"#)),
            sql: None,
        };
        assert_eq!(serde_json::to_string(&kept).expect("encode"), change);
        assert_eq!(kept.row.as_ref().expect("a row").to_row().expect("parse"), row);
        assert_eq!(RowText::from_row(&row).as_bytes(), br#"{"a":1,"b":"x\"y"}"#);
        let back: ChangeEvent<RowText> = serde_json::from_str(change).expect("change as text");
        assert_eq!(back, kept);
        // Text that is not JSON is refused rather than sent.
        let broken = ChangeEvent { row: Some(RowText::from_json("{\"a\":")), ..kept };
        assert!(serde_json::to_string(&broken).is_err());
        // So are bytes that are not UTF-8.
        let not_utf8 =
            ChangeEvent { row: Some(RowText::from_json(b"{\"a\":\"\xff\"}".to_vec())), ..broken };
        assert!(serde_json::to_string(&not_utf8).is_err());
    }
}

/// `POST /v1/bases/{id}/api-tokens`: a new API token for one base, for the
/// SeaTable-compatible API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    /// A name for humans, unique in the base [default: `token-N`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `rw` (read and write) or `r` (read only) [default: `rw`].
    #[serde(default = "read_write")]
    pub permission: String,
}

fn read_write() -> String {
    "rw".into()
}

/// An API token as listed: the secret itself is shown only when made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenInfo {
    /// Its name.
    pub name: String,
    /// `rw` or `r`.
    pub permission: String,
    /// When it was made, RFC 3339.
    pub created_at: String,
}

/// A new API token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// The token: give it to `Base(api_token, server_url)`.
    pub api_token: String,
    /// The base it opens.
    pub dtable_uuid: BaseId,
    /// Its name, rights and creation time.
    #[serde(flatten)]
    pub info: ApiTokenInfo,
}

/// `GET /v1/bases/{id}/api-tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenList {
    /// The base's tokens, by name.
    pub api_tokens: Vec<ApiTokenInfo>,
}

/// The content types of a base sent or received as a SQLite file.
pub const SQLITE_CONTENT_TYPES: [&str; 2] = ["application/vnd.sqlite3", "application/x-sqlite3"];
