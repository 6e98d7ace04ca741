//! `shoal import` and `shoal export`: a table's rows from and to CSV or JSON
//! lines, through the API.
//!
//! Import reads the file in batches of `--batch-rows` rows; each batch is
//! one insert request, so one transaction, sent with an idempotency key
//! (a retried batch is applied once). Up to [`IN_FLIGHT`] batches are sent
//! before the first is acknowledged, so the server writes one while the
//! next ones travel and the file is read on. They still apply in the
//! file's order: a batch sent while the one before it is unacknowledged
//! names that one's key in `after`, and the server applies it only if that
//! batch was applied before it (checked in log order; else nothing of it is
//! applied). The server proposes a chained batch behind the one it names,
//! so one rarely overtakes another; if it did, it fails, and so do the
//! batches chained behind it: once they have answered, they are sent again
//! as a new chain whose first batch is not chained (every batch before it
//! is acknowledged). A batch that fails unchained stops the import with its
//! lines, and the batches after it, chained to it, cannot apply. Rows of
//! one batch get consecutive rowids, so the table's rowid order is the
//! file's.
//!
//! A missing table is created first, with
//! the types the header declares (`name:INTEGER`) or, where it declares
//! none, the types the first batch's values fit (INTEGER, then REAL, then
//! TEXT). A row that does not fit (wrong field count, a value that is not a
//! number in a number column, a line that is not a JSON object) stops the
//! import with its line number before its batch is sent, so nothing of that
//! batch is applied; `--skip-bad` reports it and goes on. An empty CSV
//! field is NULL.
//!
//! Export pages through the table by rowid with linearizable reads and
//! writes a header and one line per row (NULL as an empty field).

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};
use shoal_client::Client;
use shoal_types::BaseId;
use shoal_types::api::{Params, Row, Statement};

use crate::ClientArgs;

/// A file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The base.
    id: BaseId,
    /// The table (created if missing).
    table: String,
    /// The file to read (`-`: standard input).
    file: PathBuf,
    /// The file's format.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Rows per insert (one transaction each).
    #[arg(long, default_value_t = 1000)]
    batch_rows: usize,
    /// Report rows that do not fit and go on, instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The base.
    id: BaseId,
    /// The table.
    table: String,
    /// The format to write.
    #[arg(long, value_enum, default_value = "csv")]
    format: Format,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rows per page read.
    #[arg(long, default_value_t = 1000)]
    page_rows: usize,
    #[command(flatten)]
    client: ClientArgs,
}

/// A column's type, as import treats it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Integer,
    Real,
    Text,
}

impl Kind {
    fn parse(declared: &str) -> Option<Kind> {
        let t = declared.to_ascii_uppercase();
        if t.contains("INT") {
            Some(Kind::Integer)
        } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
            Some(Kind::Real)
        } else if t.contains("CHAR") || t.contains("TEXT") || t.contains("CLOB") {
            Some(Kind::Text)
        } else {
            None
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Kind::Integer => "INTEGER",
            Kind::Real => "REAL",
            Kind::Text => "TEXT",
        }
    }

    /// The narrowest kind holding both.
    fn widen(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Text, _) | (_, Kind::Text) => Kind::Text,
            _ => Kind::Real,
        }
    }

    /// The kind a CSV field fits best.
    fn of_field(f: &str) -> Kind {
        if f.parse::<i64>().is_ok() {
            Kind::Integer
        } else if f.parse::<f64>().is_ok_and(f64::is_finite) {
            Kind::Real
        } else {
            Kind::Text
        }
    }

    fn of_json(v: &Value) -> Option<Kind> {
        match v {
            Value::Null => None,
            Value::Bool(_) => Some(Kind::Integer),
            Value::Number(n) if n.is_i64() || n.is_u64() => Some(Kind::Integer),
            Value::Number(_) => Some(Kind::Real),
            _ => Some(Kind::Text),
        }
    }
}

/// Quotes an identifier for SQL.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A CSV field as a JSON value for a column of `kind` (None: it does not fit).
fn field_value(f: &str, kind: Option<Kind>) -> Option<Value> {
    if f.is_empty() {
        return Some(Value::Null);
    }
    match kind {
        Some(Kind::Integer) => f.parse::<i64>().ok().map(Value::from),
        Some(Kind::Real) => f
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number),
        Some(Kind::Text) | None => Some(Value::String(f.to_string())),
    }
}

/// The most batches sent and not yet acknowledged (measured on two cores:
/// one in flight left the server idle while each waited for its fsync and
/// apply; three keep it busy).
const IN_FLIGHT: usize = 3;

/// A batch sent and not yet acknowledged.
struct Sent {
    /// Its idempotency key.
    key: String,
    /// The lines of the file it holds, first and last.
    lines: (u64, u64),
    /// Whether it named the batch before it in `after` (that one was in
    /// flight when it was sent).
    chained: bool,
    /// The request; answers the rows, to send them again.
    task: tokio::task::JoinHandle<(Vec<Row>, shoal_types::Result<()>)>,
}

/// What import knows of the target table.
struct Target {
    client: Client,
    id: BaseId,
    table: String,
    /// Column name to kind, once the table exists.
    kinds: Option<Vec<(String, Option<Kind>)>>,
    /// The batches being written, in the file's order.
    in_flight: VecDeque<Sent>,
    /// This import's prefix of idempotency keys.
    run: String,
    /// How many batches were sent.
    sent: u64,
}

impl Target {
    async fn open(client: Client, id: BaseId, table: &str) -> anyhow::Result<Target> {
        use rand::Rng as _;
        let tables = client.tables(id).await?;
        let kinds =
            tables.tables.iter().find(|t| t.name == table).map(|t| {
                t.columns.iter().map(|c| (c.name.clone(), Kind::parse(&c.type_))).collect()
            });
        let run: String =
            rand::rng().sample_iter(rand::distr::Alphanumeric).take(16).map(char::from).collect();
        Ok(Target {
            client,
            id,
            table: table.to_string(),
            kinds,
            in_flight: VecDeque::new(),
            run: format!("import-{run}"),
            sent: 0,
        })
    }

    /// Creates the table with these columns.
    async fn create(&mut self, columns: Vec<(String, Kind)>) -> anyhow::Result<()> {
        let list: Vec<String> =
            columns.iter().map(|(n, k)| format!("{} {}", ident(n), k.sql())).collect();
        let sql = format!("CREATE TABLE {} ({})", ident(&self.table), list.join(", "));
        let statements = vec![Statement { sql, params: Default::default() }];
        self.client.execute(self.id, statements, true).await.context("cannot create the table")?;
        self.kinds = Some(columns.into_iter().map(|(n, k)| (n, Some(k))).collect());
        Ok(())
    }

    fn kind(&self, column: &str) -> Option<Kind> {
        self.kinds.as_ref()?.iter().find(|(n, _)| n == column).and_then(|(_, k)| *k)
    }

    /// Sends a batch once fewer than [`IN_FLIGHT`] are unacknowledged, and
    /// returns at once: the next batch is parsed while this one is written.
    /// It is chained to the batch before it if that one is in flight (see
    /// the module docs).
    async fn insert(&mut self, rows: Vec<Row>, lines: (u64, u64)) -> anyhow::Result<()> {
        while self.in_flight.len() >= IN_FLIGHT {
            self.settle().await?;
        }
        if rows.is_empty() {
            return Ok(());
        }
        self.sent += 1;
        let key = format!("{}-{}", self.run, self.sent);
        let after = self.in_flight.back().map(|s| s.key.clone());
        let sent = self.send(key, lines, rows, after)?;
        self.in_flight.push_back(sent);
        Ok(())
    }

    /// Starts the request of a batch.
    fn send(
        &self,
        key: String,
        lines: (u64, u64),
        rows: Vec<Row>,
        after: Option<String>,
    ) -> anyhow::Result<Sent> {
        let client = self.client.with_idempotency_key(&key)?;
        let (id, table, chained) = (self.id, self.table.clone(), after.is_some());
        let task = tokio::spawn(async move {
            let result = client.insert_rows_after(id, &table, &rows, after.as_deref()).await;
            (rows, result.map(|_| ()))
        });
        Ok(Sent { key, lines, chained, task })
    }

    /// Waits for the oldest batch in flight. A chained batch that failed
    /// may have reached the log before the one it follows; the batches
    /// after it, chained to it, then fail too. Once they have answered,
    /// those that failed are sent again as a new chain, the first alone
    /// (every batch before it is acknowledged). A batch that fails alone
    /// stops the import; the batches after it, chained to it, cannot apply
    /// and are abandoned.
    async fn settle(&mut self) -> anyhow::Result<()> {
        let Some(sent) = self.in_flight.pop_front() else { return Ok(()) };
        let (rows, result) = sent.task.await.context("the insert task failed")?;
        let error = match result {
            Ok(()) => return Ok(()),
            Err(_) if sent.chained => None,
            Err(e) => Some(e),
        };
        if let Some(e) = error {
            for s in self.in_flight.drain(..) {
                s.task.abort();
            }
            let (first, last) = sent.lines;
            return Err(anyhow::Error::from(e).context(format!(
                "lines {first}-{last}: the batch was refused; nothing of it was imported"
            )));
        }
        let mut again = vec![(sent.key, sent.lines, rows)];
        for s in std::mem::take(&mut self.in_flight) {
            match s.task.await.context("the insert task failed")? {
                // The one it follows had applied after all (its answer
                // was lost): it stands.
                (_, Ok(())) => {}
                (rows, Err(_)) => again.push((s.key, s.lines, rows)),
            }
        }
        let mut after = None;
        for (key, lines, rows) in again {
            let sent = self.send(key.clone(), lines, rows, after.replace(key))?;
            self.in_flight.push_back(sent);
        }
        Ok(())
    }

    /// Waits for every batch in flight.
    async fn finish(&mut self) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.settle().await?;
        }
        Ok(())
    }
}

/// Counts and reports what an import did.
#[derive(Default)]
struct Tally {
    imported: u64,
    skipped: u64,
}

/// A row that does not fit: stop, or report and skip.
fn bad(line: u64, why: &str, skip: bool, tally: &mut Tally) -> anyhow::Result<()> {
    if skip {
        eprintln!("line {line}: {why} (skipped)");
        tally.skipped += 1;
        Ok(())
    } else {
        bail!("line {line}: {why}; nothing of its batch was imported (use --skip-bad to go on)")
    }
}

fn progress(len: Option<u64>) -> indicatif::ProgressBar {
    match len {
        Some(len) => {
            let bar = indicatif::ProgressBar::new(len);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
                )
                .expect("a valid template"),
            );
            bar
        }
        None => indicatif::ProgressBar::new_spinner(),
    }
}

pub async fn import(args: ImportArgs) -> anyhow::Result<()> {
    if args.batch_rows == 0 {
        bail!("--batch-rows must be at least 1");
    }
    let client = args.client.client()?;
    let mut target = Target::open(client, args.id, &args.table).await?;
    let (reader, len): (Box<dyn BufRead>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::BufReader::new(std::io::stdin())), None)
    } else {
        let f = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(std::io::BufReader::with_capacity(1 << 20, f)), len)
    };
    let bar = progress(len);
    bar.set_message(format!("importing into {}", args.table));
    let result = match args.format {
        Format::Csv => import_csv(reader, &mut target, &args, &bar).await,
        Format::Jsonl => import_jsonl(reader, &mut target, &args, &bar).await,
    };
    // The batch in flight is written (or fails) before anything is said.
    let written = target.finish().await;
    bar.finish_and_clear();
    let tally = result?;
    written?;
    out!(
        "imported {} rows into {}{}",
        tally.imported,
        args.table,
        if tally.skipped > 0 { format!(", skipped {}", tally.skipped) } else { String::new() }
    );
    Ok(())
}

async fn import_csv(
    reader: Box<dyn BufRead>,
    target: &mut Target,
    args: &ImportArgs,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Tally> {
    let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(reader);
    let header = csv.headers().context("cannot read the header row")?.clone();
    // `name` or `name:TYPE`.
    let mut names = Vec::new();
    let mut declared = Vec::new();
    for h in header.iter() {
        let (name, kind) = match h.rsplit_once(':') {
            Some((n, t)) if Kind::parse(t).is_some() => (n.trim(), Kind::parse(t)),
            _ => (h.trim(), None),
        };
        if name.is_empty() {
            bail!("line 1: a column without a name");
        }
        names.push(name.to_string());
        declared.push(kind);
    }
    let mut tally = Tally::default();
    let mut batch: Vec<(u64, csv::StringRecord)> = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let more = csv.read_record(&mut record).map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            anyhow::anyhow!("line {line}: {e}")
        })?;
        if more {
            let line = record.position().map_or(0, |p| p.line());
            if record.len() != names.len() {
                let why = format!("{} fields where the header has {}", record.len(), names.len());
                bad(line, &why, args.skip_bad, &mut tally)?;
            } else {
                batch.push((line, record.clone()));
            }
        }
        if batch.len() >= args.batch_rows || (!more && !batch.is_empty()) {
            if target.kinds.is_none() {
                // The table is made from the header and this first batch.
                let mut columns = Vec::new();
                for (i, name) in names.iter().enumerate() {
                    let kind = declared[i].unwrap_or_else(|| {
                        batch
                            .iter()
                            .map(|(_, r)| &r[i])
                            .filter(|f| !f.is_empty())
                            .map(Kind::of_field)
                            .reduce(Kind::widen)
                            .unwrap_or(Kind::Text)
                    });
                    columns.push((name.clone(), kind));
                }
                target.create(columns).await?;
            }
            let mut rows = Vec::with_capacity(batch.len());
            let lines = (batch.first().map_or(0, |b| b.0), batch.last().map_or(0, |b| b.0));
            'rows: for (line, r) in batch.drain(..) {
                let mut row = Map::new();
                for (i, name) in names.iter().enumerate() {
                    let kind = declared[i].or(target.kind(name));
                    match field_value(&r[i], kind) {
                        Some(v) => {
                            row.insert(name.clone(), v);
                        }
                        None => {
                            let why = format!(
                                "{:?} in column {name} is not {}",
                                &r[i],
                                kind.map_or("a value", |k| k.sql())
                            );
                            bad(line, &why, args.skip_bad, &mut tally)?;
                            continue 'rows;
                        }
                    }
                }
                rows.push(row);
            }
            let n = rows.len() as u64;
            target.insert(rows, lines).await?;
            tally.imported += n;
            bar.set_position(csv.position().byte());
        }
        if !more {
            break;
        }
    }
    Ok(tally)
}

async fn import_jsonl(
    mut reader: Box<dyn BufRead>,
    target: &mut Target,
    args: &ImportArgs,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut batch: Vec<(u64, Map<String, Value>)> = Vec::new();
    let (mut line_no, mut bytes) = (0u64, 0u64);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).context("cannot read the file")?;
        let more = n > 0;
        if more {
            line_no += 1;
            bytes += n as u64;
            let text = line.trim();
            if !text.is_empty() {
                match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(o)) => batch.push((line_no, o)),
                    Ok(_) => bad(line_no, "not a JSON object", args.skip_bad, &mut tally)?,
                    Err(e) => bad(line_no, &format!("not JSON: {e}"), args.skip_bad, &mut tally)?,
                }
            }
        }
        if batch.len() >= args.batch_rows || (!more && !batch.is_empty()) {
            if target.kinds.is_none() {
                let mut columns: Vec<(String, Option<Kind>)> = Vec::new();
                for (_, o) in &batch {
                    for (k, v) in o {
                        let kind = Kind::of_json(v);
                        match columns.iter_mut().find(|(n, _)| n == k) {
                            Some((_, c)) => {
                                *c = match (*c, kind) {
                                    (Some(a), Some(b)) => Some(a.widen(b)),
                                    (a, b) => a.or(b),
                                }
                            }
                            None => columns.push((k.clone(), kind)),
                        }
                    }
                }
                let columns =
                    columns.into_iter().map(|(n, k)| (n, k.unwrap_or(Kind::Text))).collect();
                target.create(columns).await?;
            }
            let mut rows = Vec::with_capacity(batch.len());
            let lines = (batch.first().map_or(0, |b| b.0), batch.last().map_or(0, |b| b.0));
            'rows: for (line, o) in batch.drain(..) {
                for (k, v) in &o {
                    let fits = match (target.kind(k), v) {
                        (_, Value::Null) => true,
                        (Some(Kind::Integer), v) => v.is_i64() || v.is_u64() || v.is_boolean(),
                        (Some(Kind::Real), v) => v.is_number(),
                        _ => true,
                    };
                    if !fits {
                        let why = format!("{v} in column {k} is not a {:?}", target.kind(k));
                        bad(line, &why, args.skip_bad, &mut tally)?;
                        continue 'rows;
                    }
                }
                rows.push(o);
            }
            let n = rows.len() as u64;
            target.insert(rows, lines).await?;
            tally.imported += n;
            bar.set_position(bytes);
        }
        if !more {
            break;
        }
    }
    Ok(tally)
}

/// Where export writes.
enum Sink {
    Csv(Box<csv::Writer<Box<dyn Write>>>),
    Jsonl(Box<dyn Write>),
}

/// A value as a CSV field: NULL is empty.
fn csv_field(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub async fn export(args: ExportArgs) -> anyhow::Result<()> {
    if args.page_rows == 0 {
        bail!("--page-rows must be at least 1");
    }
    let client = args.client.client()?;
    let out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let table = ident(&args.table);
    let mut sink = match args.format {
        Format::Csv => Sink::Csv(Box::new(csv::Writer::from_writer(out))),
        Format::Jsonl => Sink::Jsonl(out),
    };
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("exporting {}", args.table));
    let (mut after, mut count, mut header_written) = (i64::MIN, 0u64, false);
    loop {
        let sql = format!(
            "SELECT _rowid_, * FROM {table} WHERE _rowid_ > ? ORDER BY _rowid_ LIMIT {}",
            args.page_rows
        );
        let params = Params::Positional(vec![Value::from(after)]);
        let q = client.query(args.id, &sql, params).await?;
        let columns = q.columns.get(1..).unwrap_or_default();
        if !header_written {
            if let Sink::Csv(w) = &mut sink {
                w.write_record(columns)?;
            }
            header_written = true;
        }
        for row in &q.rows {
            after = row[0].as_i64().context("a rowid that is not an integer")?;
            let values = &row[1..];
            match &mut sink {
                Sink::Csv(w) => w.write_record(values.iter().map(csv_field))?,
                Sink::Jsonl(w) => {
                    let object: Map<String, Value> =
                        columns.iter().cloned().zip(values.iter().cloned()).collect();
                    serde_json::to_writer(&mut *w, &object)?;
                    w.write_all(b"\n")?;
                }
            }
            count += 1;
        }
        bar.set_position(count);
        if q.rows.len() < args.page_rows {
            break;
        }
    }
    match &mut sink {
        Sink::Csv(w) => w.flush()?,
        Sink::Jsonl(w) => w.flush()?,
    }
    bar.finish_and_clear();
    if args.out.is_some() {
        out!("exported {count} rows of {}", args.table);
    }
    Ok(())
}
