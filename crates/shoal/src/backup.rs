//! `shoal backup` and `shoal restore`.
//!
//! A backup is a directory: one SQLite file per base, copied online by the
//! node that leads it (`GET /v1/bases/{id}/backup`), and `manifest.json`
//! with the format version and, per base, its id, name, file, size, SHA-256,
//! the applied index the copy reflects and, when no write came in between,
//! the base's content checksum.
//!
//! Restore checks every file it is asked for (size, SHA-256, SQLite's
//! integrity check) and that no target base exists (unless `--replace`)
//! before it changes anything. It then creates each base through the
//! normal write path: the tables, their rows in rowid order (rowids kept),
//! then indexes, views and triggers. It compares the restored base's
//! checksum with the one recorded.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Map;
use sha2::Digest as _;
use shoal_types::BaseId;
use shoal_types::api::Statement;

use crate::ClientArgs;

/// The manifest format this build writes and reads.
const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// Rows per insert when restoring.
const BATCH_ROWS: usize = 1000;

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    created_at: String,
    bases: Vec<Entry>,
}

#[derive(Serialize, Deserialize, Clone)]
struct Entry {
    id: BaseId,
    name: Option<String>,
    file: String,
    bytes: u64,
    sha256: String,
    applied_index: u64,
    /// The base's content checksum, when it could be taken at the same index.
    checksum: Option<String>,
}

#[derive(Args)]
pub struct BackupArgs {
    /// The directory to write (must not hold a backup already).
    #[arg(long)]
    out: PathBuf,
    /// A base to back up (repeat for several) [default: every base].
    #[arg(long = "base")]
    bases: Vec<BaseId>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup directory.
    path: PathBuf,
    /// A base of the backup to restore (repeat for several) [default: all].
    #[arg(long = "base")]
    bases: Vec<BaseId>,
    /// Restore the one base chosen under this id instead.
    #[arg(long = "as")]
    as_id: Option<BaseId>,
    /// Drop a base that exists under a target id first.
    #[arg(long)]
    replace: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} bases")
            .expect("a valid template"),
    );
    bar.set_message(what.to_string());
    bar
}

pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    if args.out.join(MANIFEST).exists() {
        bail!("{} already holds a backup: give another --out", args.out.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut infos = Vec::new();
    if args.bases.is_empty() {
        let mut after = None;
        loop {
            let page = client.list_bases(Some(1000), after).await?;
            infos.extend(page.bases);
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
    } else {
        for id in &args.bases {
            infos.push(client.get_base(*id).await?);
        }
    }
    let progress = bar(infos.len() as u64, "backing up");
    let mut entries = Vec::new();
    for info in infos {
        let (bytes, applied_index) = client.backup(info.id).await?;
        let sum = client.checksum(info.id).await?;
        let file = format!("{}.sqlite", info.id);
        std::fs::write(args.out.join(&file), &bytes)
            .with_context(|| format!("cannot write {}", args.out.join(&file).display()))?;
        entries.push(Entry {
            id: info.id,
            name: info.name,
            file,
            bytes: bytes.len() as u64,
            sha256: sha256(&bytes),
            applied_index,
            checksum: (sum.applied_index == applied_index).then_some(sum.checksum),
        });
        progress.inc(1);
    }
    progress.finish_and_clear();
    let manifest = Manifest {
        format: FORMAT,
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        bases: entries,
    };
    let text = serde_json::to_string_pretty(&manifest)?;
    std::fs::write(args.out.join(MANIFEST), text)
        .with_context(|| format!("cannot write {}", args.out.join(MANIFEST).display()))?;
    out!("backed up {} bases to {}", manifest.bases.len(), args.out.display());
    Ok(())
}

/// Checks one file of a backup; the reason it is not usable, if it is not.
fn check_file(dir: &Path, e: &Entry) -> anyhow::Result<()> {
    let path = dir.join(&e.file);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if bytes.len() as u64 != e.bytes || sha256(&bytes) != e.sha256 {
        bail!(
            "{} is corrupt or truncated ({} bytes, the manifest says {})",
            path.display(),
            bytes.len(),
            e.bytes
        );
    }
    let db = rusqlite::Connection::open_with_flags(
        &path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", path.display()))?;
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .with_context(|| format!("{} is not a sound SQLite file", path.display()))?;
    if ok != "ok" {
        bail!("{} fails SQLite's integrity check: {ok}", path.display());
    }
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let client = args.client.client()?;
    let text = std::fs::read_to_string(args.path.join(MANIFEST))
        .with_context(|| format!("{} is not a backup (no {MANIFEST})", args.path.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not readable", args.path.join(MANIFEST).display()))?;
    if manifest.format != FORMAT {
        bail!("backup format {} is not the one this build reads ({FORMAT})", manifest.format);
    }
    let mut chosen: Vec<Entry> = if args.bases.is_empty() {
        manifest.bases.clone()
    } else {
        let mut v = Vec::new();
        for id in &args.bases {
            match manifest.bases.iter().find(|e| e.id == *id) {
                Some(e) => v.push(e.clone()),
                None => bail!("the backup holds no base {id}"),
            }
        }
        v
    };
    let mut targets: Vec<BaseId> = chosen.iter().map(|e| e.id).collect();
    if let Some(new) = args.as_id {
        if chosen.len() != 1 {
            bail!("--as needs exactly one base (choose it with --base)");
        }
        targets = vec![new];
    }
    // Everything is checked before anything changes.
    for e in &chosen {
        check_file(&args.path, e).context("nothing was restored")?;
    }
    for id in &targets {
        match client.get_base(*id).await {
            Ok(_) if !args.replace => bail!(
                "base {id} exists: use --replace to drop it first, or --as to restore under \
                 another id; nothing was restored"
            ),
            Ok(_) | Err(shoal_types::Error::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let progress = bar(chosen.len() as u64, "restoring");
    for (e, target) in chosen.drain(..).zip(targets) {
        if args.replace {
            match client.drop_base(target).await {
                Ok(_) | Err(shoal_types::Error::NotFound(_)) => {}
                Err(err) => return Err(err.into()),
            }
        }
        let file = args.path.join(&e.file);
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        // The file itself, as one replicated write; one too large for the
        // server's body limit goes as its statements and rows instead.
        match client.restore_base(Some(target), e.name.clone(), bytes.into()).await {
            Ok(_) => {}
            Err(shoal_types::Error::TooLarge(_)) => {
                restore_one(&client, &file, target, e.name.clone()).await?
            }
            Err(err) => return Err(err.into()),
        }
        if let Some(want) = &e.checksum {
            let got = client.checksum(target).await?;
            if got.checksum != *want {
                bail!("base {target} was restored but its checksum differs from the backup's");
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    out!("restored {} bases", progress.position());
    Ok(())
}

/// A user object of a database file: its type, name and SQL.
fn objects(db: &rusqlite::Connection) -> anyhow::Result<Vec<(String, String, String)>> {
    let mut stmt = db.prepare(
        "SELECT type, name, sql FROM sqlite_schema
         WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
           AND name NOT LIKE '\\_shoal\\_%' ESCAPE '\\'
         ORDER BY rowid",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

async fn restore_one(
    client: &shoal_client::Client,
    file: &Path,
    id: BaseId,
    name: Option<String>,
) -> anyhow::Result<()> {
    let db =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let objects = objects(&db)?;
    client.create_base(Some(id), name).await?;
    let ddl = |sql: &str| vec![Statement { sql: sql.to_string(), params: Default::default() }];
    let tables: Vec<&(String, String, String)> =
        objects.iter().filter(|(kind, _, _)| kind == "table").collect();
    for (_, _, sql) in &tables {
        client.execute(id, ddl(sql), true).await?;
    }
    for (_, table, sql) in &tables {
        if sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL") {
            continue;
        }
        let with_rowid = !sql.to_ascii_uppercase().contains("WITHOUT ROWID");
        // Stored columns only: generated ones are computed again.
        let stored: Vec<String> = db
            .prepare("SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 0")?
            .query_map([table], |r| r.get::<_, String>(0))?
            .map(|n| n.map(|n| shoal_storage::rows::quote(&n)))
            .collect::<Result<_, _>>()?;
        let select = format!(
            "SELECT {}{} FROM {}{}",
            if with_rowid { "rowid, " } else { "" },
            stored.join(", "),
            shoal_storage::rows::quote(table),
            if with_rowid { " ORDER BY rowid" } else { "" }
        );
        let mut stmt = db.prepare(&select)?;
        let names: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
        let mut rows = stmt.query([])?;
        let mut batch = Vec::new();
        while let Some(row) = rows.next()? {
            let mut r = Map::new();
            for (i, column) in names.iter().enumerate() {
                let key = if with_rowid && i == 0 {
                    shoal_types::api::ROWID_KEY.to_string()
                } else {
                    column.clone()
                };
                r.insert(key, shoal_storage::sql_to_json(row.get_ref(i)?));
            }
            batch.push(r);
            if batch.len() == BATCH_ROWS {
                client.insert_rows(id, table, std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            client.insert_rows(id, table, batch).await?;
        }
    }
    for (kind, _, sql) in &objects {
        if kind != "table" {
            client.execute(id, ddl(sql), true).await?;
        }
    }
    Ok(())
}
