//! `shoal watch ID [--after INDEX] [--json]`: prints a base's change feed,
//! resuming by itself across disconnects and failovers (over every endpoint
//! of a comma-separated `--endpoint`), until Ctrl-C or the base is dropped.

use std::path::PathBuf;

use clap::Args;
use shoal_client::watch::{Watch, WatchEvent, WatchOptions};
use shoal_types::BaseId;
use shoal_types::api::{ChangeEvent, ChangeOp, FeedMessage};

use crate::ClientArgs;

#[derive(Args)]
pub struct WatchArgs {
    /// The base.
    id: BaseId,
    /// Start after this log index [default: from now on].
    #[arg(long)]
    after: Option<u64>,
    /// Print each event as one JSON object per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(a: WatchArgs) -> anyhow::Result<()> {
    let endpoints: Vec<String> = a.client.endpoint.split(',').map(String::from).collect();
    let token = a.client.token.clone().or_else(|| {
        std::fs::read_to_string(PathBuf::from("shoal-data").join("admin.token"))
            .ok()
            .map(|t| t.trim().to_string())
    });
    let options = WatchOptions { tls: a.client.tls()?, ..WatchOptions::default() };
    let mut watch = Watch::new(&endpoints, token, a.id, a.after, options)?;
    loop {
        let event = tokio::select! {
            e = watch.next() => e?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match event {
            None => return Ok(()),
            Some(WatchEvent::Reconnecting { endpoint, reason }) => {
                eprintln!("feed from {endpoint} lost ({reason}); resuming");
            }
            Some(WatchEvent::Message(m)) if a.json => out!("{}", serde_json::to_string(&m)?),
            Some(WatchEvent::Message(m)) => out!("{}", line(&m)),
        }
    }
}

/// One event for humans.
fn line(m: &FeedMessage) -> String {
    match m {
        FeedMessage::Change(e) => change_line(e),
        FeedMessage::Resync(r) => format!(
            "resync: older changes are no longer kept; re-read the base (continuing after #{})",
            r.index
        ),
        FeedMessage::Error(e) => format!("error: {}: {}", e.error.code, e.error.message),
    }
}

fn change_line(e: &ChangeEvent) -> String {
    let table = e.table.as_deref().unwrap_or("-");
    match e.op {
        ChangeOp::Insert | ChangeOp::Update | ChangeOp::Delete => {
            let op = match e.op {
                ChangeOp::Insert => "insert",
                ChangeOp::Update => "update",
                _ => "delete",
            };
            let rowid = e.rowid.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
            let row = e.row.as_ref().map(|r| format!(" {}", serde_json::Value::Object(r.clone())));
            format!("#{} {op} {table} rowid={rowid}{}", e.index, row.unwrap_or_default())
        }
        ChangeOp::Ddl => format!("#{} ddl {table}: {}", e.index, e.sql.as_deref().unwrap_or("")),
        ChangeOp::BaseDropped => format!("#{} base dropped", e.index),
    }
}
