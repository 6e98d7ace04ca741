//! The client commands: `base`, `sql`, `tables`, `rows`.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;
use shoal_client::RowsQuery;
use shoal_types::api::{Params, Row, Statement};
use shoal_types::{BaseId, NodeId};

use crate::ClientArgs;

#[derive(Subcommand)]
pub enum BaseCommand {
    /// Create a base and print its id.
    Create {
        /// A name for humans.
        #[arg(long)]
        name: Option<String>,
        /// The id to use [default: a random UUID].
        #[arg(long)]
        id: Option<BaseId>,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List bases.
    List {
        /// Stop after this many bases [default: all].
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one base.
    Get {
        id: BaseId,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drop a base and all its data.
    Drop {
        id: BaseId,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Make an API token for one base (for SeaTable's clients) and print it.
    Create {
        /// The base the token opens.
        #[arg(long)]
        base: BaseId,
        /// Its name, unique in the base [default: token-N].
        #[arg(long)]
        name: Option<String>,
        /// Reads only: writes with it are refused.
        #[arg(long)]
        read_only: bool,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a base's API tokens (names and rights; the tokens themselves
    /// are shown only when made).
    List {
        #[arg(long)]
        base: BaseId,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a base's API token by name; access tokens made from it stop
    /// working at once.
    Revoke {
        #[arg(long)]
        base: BaseId,
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { base, name, read_only, out, client } => {
            let token = client.client()?.create_api_token(base, name, read_only).await?;
            if out.json {
                return print_json(&token);
            }
            out!("{}", token.api_token);
            Ok(())
        }
        TokenCommand::List { base, out, client } => {
            let list = client.client()?.list_api_tokens(base).await?;
            if out.json {
                return print_json(&list.api_tokens);
            }
            let header = ["name", "permission", "created_at"].map(String::from);
            print_table(
                &header,
                list.api_tokens
                    .iter()
                    .map(|t| vec![t.name.clone(), t.permission.clone(), t.created_at.clone()]),
            );
            Ok(())
        }
        TokenCommand::Revoke { base, name, client } => {
            client.client()?.revoke_api_token(base, &name).await?;
            out!("revoked {name}");
            Ok(())
        }
    }
}

/// Output format.
#[derive(Args, Clone, Copy, Debug)]
pub struct Output {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Show the registry, the active monitor, the nodes and the placement.
    Status {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show every bucket: its replicas, its leader and term, and each
    /// replica's role, commit and applied index and lag.
    Buckets {
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask the active monitor to rebalance the placement map now.
    Rebalance {
        /// Wait, with a progress bar, until the monitor has answered and
        /// every move it started is done.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long (the moves go on), e.g. 10m.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Move every replica off a live node; the map places nothing there
    /// until `undrain`. Waits until the node holds nothing.
    Drain {
        /// The node's id.
        node: String,
        /// Return once the drain is recorded, without waiting.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this long (the drain goes on), e.g. 10m.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Let a drained node take replicas again.
    Undrain {
        /// The node's id.
        node: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a dead node from the member list. Refused while it is live or
    /// while the placement map still places replicas on it.
    Forget {
        /// The node's id.
        node: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
pub struct SqlArgs {
    /// The base.
    id: BaseId,
    /// One SQL statement.
    sql: String,
    /// A parameter, bound in order; parsed as JSON when it is JSON (42, null,
    /// "text", {"base64": ".."}), else taken as text.
    #[arg(long = "param", short = 'p')]
    params: Vec<String>,
    /// Send as a write (/execute) even if it looks like a read.
    #[arg(long, conflicts_with = "read")]
    write: bool,
    /// Send as a read (/query) even if it looks like a write.
    #[arg(long)]
    read: bool,
    #[command(flatten)]
    out: Output,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct TablesArgs {
    /// The base.
    id: BaseId,
    #[command(flatten)]
    out: Output,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
pub enum RowsCommand {
    /// List rows of a table.
    List {
        id: BaseId,
        table: String,
        /// Page size.
        #[arg(long)]
        limit: Option<u64>,
        /// Rows to skip.
        #[arg(long)]
        offset: Option<u64>,
        /// Column to order by.
        #[arg(long)]
        order_by: Option<String>,
        /// Descending order.
        #[arg(long)]
        desc: bool,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one row.
    Get {
        id: BaseId,
        table: String,
        rowid: i64,
        #[command(flatten)]
        out: Output,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Insert rows: a JSON object, or an array of objects.
    Insert {
        id: BaseId,
        table: String,
        json: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change columns of one row, given as a JSON object.
    Update {
        id: BaseId,
        table: String,
        rowid: i64,
        json: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete one row.
    Delete {
        id: BaseId,
        table: String,
        rowid: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_table(header: &[String], rows: impl IntoIterator<Item = Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    let mut n = 0;
    for r in rows {
        t.add_row(r);
        n += 1;
    }
    out!("{t}");
    out!("({n} row{})", if n == 1 { "" } else { "s" });
}

pub async fn base(cmd: BaseCommand) -> anyhow::Result<()> {
    match cmd {
        BaseCommand::Create { name, id, out, client } => {
            let info = client.client()?.create_base(id, name).await?;
            if out.json {
                return print_json(&info);
            }
            out!("{}", info.id);
            Ok(())
        }
        BaseCommand::List { limit, out, client } => {
            let c = client.client()?;
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let want = limit.map(|l| (l - all.len()).min(1000)).unwrap_or(1000);
                if want == 0 {
                    break;
                }
                let page = c.list_bases(Some(want), after).await?;
                all.extend(page.bases);
                match page.next_after {
                    Some(a) => after = Some(a),
                    None => break,
                }
            }
            if out.json {
                return print_json(&all);
            }
            let header = ["id", "name", "bucket", "created_at"].map(String::from);
            print_table(
                &header,
                all.iter().map(|b| {
                    vec![
                        b.id.to_string(),
                        b.name.clone().unwrap_or_default(),
                        b.bucket.to_string(),
                        b.created_at.clone(),
                    ]
                }),
            );
            Ok(())
        }
        BaseCommand::Get { id, out: _, client } => {
            print_json(&client.client()?.get_base(id).await?)
        }
        BaseCommand::Drop { id, client } => {
            client.client()?.drop_base(id).await?;
            out!("dropped {id}");
            Ok(())
        }
    }
}

pub async fn cluster(cmd: ClusterCommand) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status { out, client } => {
            let s = client.client()?.cluster_status().await?;
            if out.json {
                return print_json(&s);
            }
            out!("registry:  {}", s.registry);
            match &s.monitor {
                Some(m) => out!("monitor:   {} {}", m.id, m.url.as_deref().unwrap_or("")),
                None => out!("monitor:   none elected"),
            }
            out!(
                "placement: epoch {}, {} topology, replication factor {}{}",
                s.epoch,
                s.topology,
                s.replication_factor,
                if s.rebalance_pending { ", rebalance pending" } else { "" }
            );
            let header = [
                "node", "live", "since", "zone", "capacity", "replicas", "hosted", "drained", "url",
            ]
            .map(String::from);
            print_table(
                &header,
                s.nodes.iter().map(|n| {
                    vec![
                        n.node_id.to_string(),
                        if n.live { "yes" } else { "NO" }.to_string(),
                        n.since.clone().unwrap_or_default(),
                        n.zone.clone(),
                        n.capacity.to_string(),
                        n.replicas.to_string(),
                        n.hosted.to_string(),
                        if n.drained { "yes" } else { "" }.to_string(),
                        n.node_url.clone(),
                    ]
                }),
            );
            out!("under-replicated buckets: {}", s.under_replicated.len());
            out!("buckets with replicas on dead nodes: {}", s.on_dead_nodes.len());
            out!("moves in progress: {}", s.moves_in_progress.len());
            Ok(())
        }
        ClusterCommand::Buckets { out, client } => {
            let s = client.client()?.cluster_buckets().await?;
            if out.json {
                return print_json(&s);
            }
            out!("placement: epoch {}, replication factor {}", s.epoch, s.replication_factor);
            let header = [
                "bucket",
                "replicas",
                "leader",
                "term",
                "states (role commit/applied lag)",
                "flags",
            ]
            .map(String::from);
            print_table(
                &header,
                s.buckets.iter().map(|b| {
                    let names: Vec<String> = b.replicas.iter().map(|n| n.to_string()).collect();
                    let states: Vec<String> = b
                        .states
                        .iter()
                        .map(|r| {
                            let lag = r.lag.map(|l| format!(" lag {l}")).unwrap_or_default();
                            format!("{} {} {}/{}{lag}", r.node_id, r.role, r.commit, r.applied)
                        })
                        .collect();
                    let flags: Vec<&str> = [
                        (b.moving, "moving"),
                        (b.under_replicated, "under-replicated"),
                        (b.on_dead_nodes, "dead replica"),
                    ]
                    .into_iter()
                    .filter_map(|(on, name)| on.then_some(name))
                    .collect();
                    vec![
                        b.bucket.to_string(),
                        names.join(" "),
                        b.leader.as_ref().map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                        b.term.to_string(),
                        states.join(", "),
                        flags.join(" "),
                    ]
                }),
            );
            if !s.unreachable.is_empty() {
                let names: Vec<String> = s.unreachable.iter().map(|n| n.to_string()).collect();
                out!("live nodes that did not answer: {}", names.join(", "));
            }
            Ok(())
        }
        ClusterCommand::Rebalance { wait, timeout, client } => {
            let client = client.client()?;
            let r = client.rebalance().await?;
            if !wait {
                out!(
                    "rebalance requested at {} (map epoch {}); the active monitor carries it out",
                    r.requested_at,
                    r.epoch
                );
                return Ok(());
            }
            let epoch = wait_rebalanced(&client, r.epoch, timeout).await?;
            out!("rebalanced: map epoch {epoch}, no move in progress");
            Ok(())
        }
        ClusterCommand::Drain { node, no_wait, timeout, client } => {
            let client = client.client()?;
            let node = NodeId(node);
            client.drain(&node, true).await?;
            if no_wait {
                out!("{node} is drained; its replicas move off it (see `shoal cluster status`)");
                return Ok(());
            }
            wait_drained(&client, &node, timeout).await?;
            out!("{node} is drained and holds no replica: stopping it moves nothing");
            Ok(())
        }
        ClusterCommand::Undrain { node, client } => {
            let node = NodeId(node);
            client.client()?.drain(&node, false).await?;
            out!(
                "{node} takes replicas again (in static topology, after `shoal cluster rebalance`)"
            );
            Ok(())
        }
        ClusterCommand::Forget { node, client } => {
            let node = NodeId(node);
            client.client()?.forget(&node).await?;
            out!("{node} is forgotten");
            Ok(())
        }
    }
}

/// Waits until `node` has no replica in the map and hosts none, with a
/// progress bar of the replicas it still holds.
async fn wait_drained(
    client: &shoal_client::Client,
    node: &NodeId,
    timeout: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} replicas moved")
            .expect("a valid template"),
    );
    bar.set_message(format!("draining {node}"));
    let mut start: Option<u64> = None;
    loop {
        let s = client.cluster_status().await?;
        let Some(n) = s.nodes.iter().find(|n| n.node_id == *node) else {
            bar.finish_and_clear();
            bail!("{node} is no longer in the cluster");
        };
        let held = n.replicas.max(n.hosted) as u64;
        let total = *start.get_or_insert(held.max(1));
        bar.set_length(total);
        bar.set_position(total.saturating_sub(held));
        if n.replicas == 0 && n.hosted == 0 {
            bar.finish_and_clear();
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bar.finish_and_clear();
            bail!(
                "{node} still holds {held} replicas after {}; the drain goes on (see `shoal cluster status`)",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Waits until the monitor has answered a rebalance asked at map `epoch`
/// and no move is in progress, with a progress bar of the moves; returns
/// the map's epoch then.
async fn wait_rebalanced(
    client: &shoal_client::Client,
    epoch: u64,
    timeout: std::time::Duration,
) -> anyhow::Result<u64> {
    let deadline = std::time::Instant::now() + timeout;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} moves done")
            .expect("a valid template"),
    );
    bar.set_message("rebalancing");
    let mut most = 0u64;
    loop {
        let s = client.cluster_status().await?;
        let moving = s.moves_in_progress.len() as u64;
        most = most.max(moving);
        bar.set_length(most);
        bar.set_position(most - moving);
        if !s.rebalance_pending && s.epoch > epoch && moving == 0 {
            bar.finish_and_clear();
            return Ok(s.epoch);
        }
        if std::time::Instant::now() >= deadline {
            bar.finish_and_clear();
            bail!(
                "the rebalance is not done after {} ({moving} moves in progress); it goes on (see `shoal cluster status`)",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Whether a statement reads, judged by its first keyword.
fn looks_like_read(sql: &str) -> bool {
    let first = shoal_storage::first_keyword(sql);
    ["select", "values", "pragma", "explain", "with"].iter().any(|k| first.eq_ignore_ascii_case(k))
}

fn parse_param(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

pub async fn sql(a: SqlArgs) -> anyhow::Result<()> {
    let c = a.client.client()?;
    let params = Params::Positional(a.params.iter().map(|p| parse_param(p)).collect());
    if a.read || (!a.write && looks_like_read(&a.sql)) {
        let r = c.query(a.id, &a.sql, params).await?;
        if a.out.json {
            return print_json(&r);
        }
        print_table(&r.columns, r.rows.iter().map(|row| row.iter().map(cell).collect()));
    } else {
        let r = c.execute(a.id, vec![Statement { sql: a.sql, params }], true).await?;
        if a.out.json {
            return print_json(&r);
        }
        let res = r.results.first().context("the server returned no result")?;
        out!(
            "{} row(s) affected, last insert rowid {}, log index {}",
            res.rows_affected,
            res.last_insert_rowid,
            r.index
        );
    }
    Ok(())
}

pub async fn tables(a: TablesArgs) -> anyhow::Result<()> {
    let t = a.client.client()?.tables(a.id).await?;
    if a.out.json {
        return print_json(&t);
    }
    let header = ["table", "column", "type", "not null", "default", "pk"].map(String::from);
    print_table(
        &header,
        t.tables.iter().flat_map(|t| {
            t.columns.iter().map(move |c| {
                vec![
                    t.name.clone(),
                    c.name.clone(),
                    c.type_.clone(),
                    c.notnull.to_string(),
                    c.default.clone().unwrap_or_default(),
                    c.pk.to_string(),
                ]
            })
        }),
    );
    Ok(())
}

fn parse_row(s: &str) -> anyhow::Result<Row> {
    match serde_json::from_str(s).context("the row must be a JSON object")? {
        Value::Object(m) => Ok(m),
        _ => bail!("the row must be a JSON object"),
    }
}

fn print_rows(rows: &[Row]) {
    let mut header: Vec<String> = Vec::new();
    for r in rows {
        for k in r.keys() {
            if !header.contains(k) {
                header.push(k.clone());
            }
        }
    }
    print_table(
        &header,
        rows.iter()
            .map(|r| header.iter().map(|h| r.get(h).map(cell).unwrap_or_default()).collect()),
    );
}

pub async fn rows(cmd: RowsCommand) -> anyhow::Result<()> {
    match cmd {
        RowsCommand::List { id, table, limit, offset, order_by, desc, out, client } => {
            let q = RowsQuery { limit, offset, order_by, desc: desc.then_some(true) };
            let r = client.client()?.list_rows(id, &table, &q).await?;
            if out.json {
                return print_json(&r);
            }
            print_rows(&r.rows);
            Ok(())
        }
        RowsCommand::Get { id, table, rowid, out, client } => {
            let r = client.client()?.get_row(id, &table, rowid).await?;
            if out.json {
                return print_json(&r);
            }
            print_rows(&[r]);
            Ok(())
        }
        RowsCommand::Insert { id, table, json, client } => {
            let rows = match serde_json::from_str(&json)
                .context("rows must be a JSON object or array of objects")?
            {
                Value::Array(items) => items
                    .into_iter()
                    .map(|v| match v {
                        Value::Object(m) => Ok(m),
                        _ => bail!("every row must be a JSON object"),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
                Value::Object(m) => vec![m],
                _ => bail!("rows must be a JSON object or array of objects"),
            };
            let r = client.client()?.insert_rows(id, &table, rows).await?;
            out!("inserted rowids {:?} at log index {}", r.rowids, r.index);
            Ok(())
        }
        RowsCommand::Update { id, table, rowid, json, client } => {
            let r = client.client()?.update_row(id, &table, rowid, parse_row(&json)?).await?;
            out!("updated row {rowid} at log index {}", r.index);
            Ok(())
        }
        RowsCommand::Delete { id, table, rowid, client } => {
            let r = client.client()?.delete_row(id, &table, rowid).await?;
            out!("deleted row {rowid} at log index {}", r.index);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_recognised() {
        assert!(looks_like_read("  select 1"));
        assert!(looks_like_read("WITH x AS (SELECT 1) SELECT * FROM x"));
        assert!(!looks_like_read("INSERT INTO t VALUES (1)"));
        assert!(!looks_like_read("create table t (a)"));
    }

    #[test]
    fn params_parse_as_json_or_text() {
        assert_eq!(parse_param("42"), serde_json::json!(42));
        assert_eq!(parse_param("hello"), serde_json::json!("hello"));
        assert_eq!(parse_param("\"42\""), serde_json::json!("42"));
        assert_eq!(parse_param("null"), Value::Null);
    }
}
