//! One base: one SQLite database (a WAL-mode file, or memory).
//!
//! A base holds the user's tables plus `_shoal_meta`, where it records its
//! format version and the log index of the last command applied to it. That
//! record is written in the same SQLite transaction as the commands' changes
//! (once, just before the transaction commits), so after a crash a base is
//! either before or after a command, never in between, and replaying the
//! log from `applied_index + 1` neither skips nor repeats an entry.
//!
//! Commands share one open transaction, each in a savepoint, until
//! [`Base::commit`] (the store commits when the bucket syncs, before a
//! snapshot, after [`MAX_UNCOMMITTED`] commands and when the base closes).
//! Every read uses the same connection and sees what was applied. SQLite may
//! roll back the whole transaction after some errors; the base then applies
//! the commands it held again (see `recover`). docs/storage.md has the why.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use shoal_types::api::{ColumnInfo, ExecuteResult, Params, QueryResponse, Statement, TableInfo};
use shoal_types::{Error, Result};

use crate::capture::Capture;
use crate::sandbox::{self, Guard, Limits, Mode};
use crate::value::{bind, sql_to_json};
use crate::{Options, idempotency, map_sqlite_error};

/// The table of a base's idempotency keys.
const IDEMPOTENCY: &str = "_shoal_idempotency";

/// The layout version of a base file (`_shoal_meta.format`).
const FORMAT: i64 = 1;

/// What an execute did.
#[derive(Debug, PartialEq, Eq)]
pub enum Executed {
    /// The statements ran at this index.
    Applied(Vec<ExecuteResult>),
    /// The index was applied before (a replay): nothing changed.
    Replayed,
    /// The idempotency key was answered before, at `index`: nothing changed.
    Repeated {
        /// The index of the first write with the key.
        index: u64,
        /// Its answer.
        results: Vec<ExecuteResult>,
    },
}

/// One open base.
pub struct Base {
    conn: Connection,
    guard: Guard,
    /// What the commands applied to this base changed (for the change feed).
    capture: Capture,
    /// The applied index before the last command that was applied.
    previous: u64,
    /// The index of the last command applied, once read: only this base's
    /// commands move it.
    applied: Option<u64>,
    /// Whether `applied` is ahead of what `_shoal_meta` holds: it is written
    /// once per transaction, when it commits.
    unwritten: bool,
    /// Whether the schema has triggers, once read (see `has_triggers`).
    triggers: Option<bool>,
    /// Whether the last command may have changed the schema or Shoal's own
    /// tables (see [`Base::changed_meta`]).
    changed_meta: bool,
    /// The commands applied since the last commit, in order.
    uncommitted: Vec<Uncommitted>,
    /// About how much memory `uncommitted` holds, in bytes.
    uncommitted_bytes: usize,
}

/// A command applied since the last commit, as it took effect: kept to apply
/// it again if SQLite rolls the open transaction back.
struct Uncommitted {
    index: u64,
    /// The statements that took effect (a statement that failed on its own
    /// changed nothing).
    statements: Vec<Statement>,
    /// Whose statements they are ([`Mode::Write`] or [`Mode::System`]).
    mode: Mode,
    /// The idempotency key and the answer recorded for it.
    key: Option<(String, String)>,
}

/// How one run of a command's statements ended.
enum Attempt {
    /// They ran: their results, and the positions of those that took effect.
    Done { results: Vec<ExecuteResult>, kept: Vec<usize> },
    /// A statement failed and SQLite rolled back the whole open transaction.
    Lost { statement: usize, error: Error },
}

/// Sets the connection's last insert rowid to 0, with a row of its own.
const RESET_LAST_INSERT_ROWID: &str =
    "INSERT OR REPLACE INTO _shoal_meta (rowid, key, value) VALUES (0, 'last_insert_rowid', 0)";

/// The largest string or blob a base holds or a statement computes.
const MAX_VALUE_BYTES: i32 = 64 << 20;

/// Shoal's own bookkeeping table of every base.
const SHOAL_TABLES: &str =
    "CREATE TABLE IF NOT EXISTS _shoal_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
     INSERT OR IGNORE INTO _shoal_meta (key, value) VALUES ('applied_index', 0), ('format', 1);";

/// The most commands applied between two commits of a base.
const MAX_UNCOMMITTED: usize = 1000;

/// The most bytes of statements kept between two commits of a base.
const MAX_UNCOMMITTED_BYTES: usize = 4 << 20;

impl Base {
    /// Opens (creating if needed) the base stored at `path`, or a new empty
    /// base in memory when `path` is `None`.
    pub fn open(path: Option<&Path>) -> Result<Base> {
        let conn = match path {
            Some(p) => Connection::open_with_flags(
                p,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
            None => Connection::open_in_memory(),
        }
        .map_err(map_sqlite_error)?;
        // WAL: readers do not block the writer. synchronous=NORMAL: a commit
        // reaches the operating system but is not fsync'd; the Raft log, which
        // is fsync'd before a write is acknowledged, can replay it. The store
        // syncs a bucket's files (`Store::sync_bucket`) before the log may
        // forget those entries. Checkpoints still sync.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -1024;
             PRAGMA temp_store = MEMORY;
             PRAGMA journal_size_limit = 1048576;
             PRAGMA busy_timeout = 5000;",
        )
        .map_err(map_sqlite_error)?;
        // No string or blob value over MAX_VALUE_BYTES, stored or computed:
        // a query cannot build a value of gigabytes in memory (or in a
        // response), and a write that tries fails alike on every replica.
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
            .map_err(map_sqlite_error)?;
        conn.execute_batch(SHOAL_TABLES).map_err(map_sqlite_error)?;
        let format: i64 = conn
            .query_row("SELECT value FROM _shoal_meta WHERE key = 'format'", [], |r| r.get(0))
            .map_err(map_sqlite_error)?;
        if format != FORMAT {
            return Err(Error::InvalidData(format!(
                "base file format {format} is unknown to this build (it reads {FORMAT})"
            )));
        }
        conn.execute_batch(&idempotency::schema(IDEMPOTENCY)).map_err(map_sqlite_error)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let guard = sandbox::install(&conn).map_err(map_sqlite_error)?;
        let capture = Capture::install(&conn);
        Ok(Base {
            conn,
            guard,
            capture,
            previous: 0,
            applied: None,
            unwritten: false,
            triggers: None,
            changed_meta: false,
            uncommitted: Vec::new(),
            uncommitted_bytes: 0,
        })
    }

    /// A base whose content is the SQLite database `image` (checked by
    /// [`crate::image::check`]), beginning at log `index`: stored at `path`
    /// (written aside, synced, then renamed in place), or in memory. What
    /// the file says of its own past is not this base's: its applied index
    /// becomes `index`, and its answered idempotency keys and API tokens
    /// are dropped (a token names the base it was made for).
    pub fn from_image(path: Option<&Path>, image: &[u8], index: u64) -> Result<Base> {
        let base = match path {
            Some(p) => {
                let aside = p.with_extension("db.restoring");
                {
                    let mut f = std::fs::File::create(&aside)?;
                    std::io::Write::write_all(&mut f, image)?;
                    f.sync_all()?;
                }
                std::fs::rename(&aside, p)?;
                if let Some(dir) = p.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Base::open(Some(p))?
            }
            None => {
                let dir = tempfile::tempdir()?;
                let file = dir.path().join("image.db");
                std::fs::write(&file, image)?;
                let mut base = Base::open(None)?;
                {
                    let src = Connection::open_with_flags(&file, OpenFlags::SQLITE_OPEN_READ_ONLY)
                        .map_err(map_sqlite_error)?;
                    rusqlite::backup::Backup::new(&src, &mut base.conn)
                        .and_then(|b| b.run_to_completion(1024, std::time::Duration::ZERO, None))
                        .map_err(map_sqlite_error)?;
                }
                base.conn.execute_batch(SHOAL_TABLES).map_err(map_sqlite_error)?;
                base.conn
                    .execute_batch(&idempotency::schema(IDEMPOTENCY))
                    .map_err(map_sqlite_error)?;
                base
            }
        };
        base.guard.leave();
        let tokens: bool = base
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_shoal_api_tokens'",
                [],
                |_| Ok(true),
            )
            .optional()
            .map_err(map_sqlite_error)?
            .unwrap_or(false);
        if tokens {
            base.conn.execute("DELETE FROM _shoal_api_tokens", []).map_err(map_sqlite_error)?;
        }
        base.conn.execute(&format!("DELETE FROM {IDEMPOTENCY}"), []).map_err(map_sqlite_error)?;
        write_applied_index(&base.conn, index)?;
        Ok(base)
    }

    /// The index of the last command applied to this base.
    pub fn applied_index(&self) -> Result<u64> {
        match self.applied {
            Some(index) => Ok(index),
            None => read_applied_index(&self.conn),
        }
    }

    /// Records that this base begins at log `index`: commands before it are
    /// not for this base. Never moves the applied index backwards.
    pub fn start_at(&mut self, index: u64) -> Result<()> {
        self.guard.leave();
        self.write_applied()?;
        self.applied = None;
        self.conn
            .execute(
                "UPDATE _shoal_meta SET value = max(value, ?1) WHERE key = 'applied_index'",
                [index as i64],
            )
            .map(|_| ())
            .map_err(map_sqlite_error)
    }

    /// Applies the statements of an execute command at log `index`.
    ///
    /// With `transaction`, the first failing statement aborts all of them and
    /// its error is returned. Without, each statement stands alone: a failing
    /// one is rolled back and reports its error in its result. Either way the
    /// applied index is recorded in the same transaction as the changes. A
    /// command at or below the applied index was applied before (a replay after
    /// restart) and is skipped: it returns no results.
    ///
    /// The change is visible to every later call on this base at once, but
    /// reaches the file at the next [`Base::commit`] (see the module docs).
    ///
    /// What an applied command changed is then ready for
    /// [`Base::take_changes`]; a replay, a repeat or a failure changed nothing.
    pub fn execute(
        &mut self,
        index: u64,
        statements: Vec<Statement>,
        transaction: bool,
        options: &Options,
        key: Option<&str>,
    ) -> Result<Executed> {
        self.execute_in(Mode::Write, index, statements, transaction, options, key, None)
    }

    /// Like [`Base::execute`], but only once the write with the idempotency
    /// key `after` was applied to this base: if it was not (or was so long
    /// ago that its key is forgotten), nothing runs and the answer is
    /// `conflict`. A repeat of `key` is answered first, as always.
    pub fn execute_after(
        &mut self,
        index: u64,
        statements: Vec<Statement>,
        transaction: bool,
        options: &Options,
        key: Option<&str>,
        after: Option<&str>,
    ) -> Result<Executed> {
        self.execute_in(Mode::Write, index, statements, transaction, options, key, after)
    }

    /// Like [`Base::execute_after`], for statements Shoal composed itself
    /// (in one transaction): they may change Shoal's own `_shoal_*` tables.
    pub fn execute_system(
        &mut self,
        index: u64,
        statements: Vec<Statement>,
        options: &Options,
        key: Option<&str>,
        after: Option<&str>,
    ) -> Result<Executed> {
        self.execute_in(Mode::System, index, statements, true, options, key, after)
    }

    #[allow(clippy::too_many_arguments)]
    fn execute_in(
        &mut self,
        mode: Mode,
        index: u64,
        statements: Vec<Statement>,
        transaction: bool,
        options: &Options,
        key: Option<&str>,
        after: Option<&str>,
    ) -> Result<Executed> {
        self.recover()?;
        // Only Shoal's own statements may write its `_shoal_*` tables, and
        // they name them; a user's trigger could write anywhere.
        self.changed_meta = (mode == Mode::System
            && statements.iter().any(|s| contains_ignore_case(&s.sql, "_shoal_")))
            || self.has_triggers()?;
        self.capture.begin();
        let result =
            self.execute_captured(mode, index, statements, transaction, options, key, after);
        self.capture.end();
        if !matches!(result, Ok(Executed::Applied(_))) {
            self.capture.take();
        }
        if self.uncommitted.len() >= MAX_UNCOMMITTED
            || self.uncommitted_bytes >= MAX_UNCOMMITTED_BYTES
        {
            self.commit()?;
        }
        result
    }

    /// Whether the last command executed (applied or not) may have changed
    /// the schema or what Shoal keeps in its own `_shoal_*` tables (such as
    /// the SeaTable catalog and API tokens): when it did not, what was read
    /// of those before still holds.
    pub fn changed_meta(&self) -> bool {
        self.changed_meta
    }

    /// The change-feed events of the last command applied, with the
    /// applied index before it; empty after a replay, repeat or failure.
    pub fn take_changes(&mut self) -> (u64, Vec<crate::feed::Change>) {
        (self.previous, self.capture.take())
    }

    /// Writes the commands applied since the last commit to the file (its
    /// write-ahead log; not fsync'd, see [`Base::open`]).
    pub fn commit(&mut self) -> Result<()> {
        self.recover()?;
        if !self.conn.is_autocommit() {
            self.guard.leave();
            self.write_applied()?;
            run_cached(&self.conn, "COMMIT")?;
        }
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        Ok(())
    }

    /// Records the applied index in the open transaction, if it moved.
    fn write_applied(&mut self) -> Result<()> {
        if let (true, Some(index)) = (self.unwritten, self.applied) {
            write_applied_index(&self.conn, index)?;
        }
        self.unwritten = false;
        Ok(())
    }

    /// Whether commands were applied since the last commit.
    pub fn has_uncommitted(&self) -> bool {
        !self.uncommitted.is_empty()
    }

    /// Opens the transaction that applied commands share, if none is open.
    fn begin(&mut self) -> Result<()> {
        if self.conn.is_autocommit() {
            run_cached(&self.conn, "BEGIN IMMEDIATE")?;
        }
        Ok(())
    }

    /// Makes the open transaction hold every command applied since the
    /// last commit again, if SQLite rolled it back. SQLite does that on its
    /// own after some errors: a write interrupted by the step budget, a
    /// conflict resolved with `OR ROLLBACK`, I/O errors. The commands are
    /// applied again, in order, as they took effect the first time (without
    /// the statements that failed); they do the same on the same state.
    fn recover(&mut self) -> Result<()> {
        if self.uncommitted.is_empty() || !self.conn.is_autocommit() {
            return Ok(());
        }
        tracing::warn!(
            commands = self.uncommitted.len(),
            "SQLite rolled back a base's open transaction; applying its commands again"
        );
        let lost = |e: Error| {
            Error::Internal(format!("applying the commands of a rolled back transaction: {e}"))
        };
        self.guard.leave();
        self.begin().map_err(lost)?;
        // They passed their step budget the first time.
        let limits = Limits { read_deadline: None, write_budget: u64::MAX / 1000 };
        for c in &self.uncommitted {
            for s in &c.statements {
                run_write(&self.conn, &self.guard, c.mode, limits, s).map_err(lost)?;
            }
            if let Some((k, answer)) = &c.key {
                idempotency::record(&self.conn, IDEMPOTENCY, k, c.index, answer).map_err(lost)?;
            }
        }
        // The rolled back transaction took the applied index with it.
        self.unwritten = true;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn execute_captured(
        &mut self,
        mode: Mode,
        index: u64,
        statements: Vec<Statement>,
        transaction: bool,
        options: &Options,
        key: Option<&str>,
        after: Option<&str>,
    ) -> Result<Executed> {
        for s in &statements {
            check_length(&s.sql, options)?;
        }
        let limits = Limits { read_deadline: None, write_budget: options.max_write_steps / 1000 };
        self.guard.leave();
        let previous = self.applied_index()?;
        if previous >= index {
            return Ok(Executed::Replayed);
        }
        let first =
            key.map(|k| idempotency::lookup(&self.conn, IDEMPOTENCY, k)).transpose()?.flatten();
        if let Some((first, answer)) = first {
            let results =
                serde_json::from_str(idempotency::decode_answer(&answer)?).map_err(|e| {
                    Error::InvalidData(format!("stored answer for an idempotency key: {e}"))
                })?;
            return Ok(Executed::Repeated { index: first, results });
        }
        // Checked when applied, in log order, so the same on every replica.
        if let Some(after) = after
            && idempotency::lookup(&self.conn, IDEMPOTENCY, after)?.is_none()
        {
            return Err(Error::Conflict(format!(
                "the write with idempotency key {after:?}, which this one must follow, \
                 has not been applied to this base"
            )));
        }
        // Statements whose failure rolled back the whole transaction: they
        // are not run again, and report that failure.
        let mut failed: BTreeMap<usize, Error> = BTreeMap::new();
        loop {
            // Outside a transaction a savepoint would start (and its release
            // commit) one of its own: the command must join the shared one,
            // which a rollback may have ended even with nothing to recover.
            self.begin()?;
            // A savepoint undoes a command that fails part-way. A lone
            // statement needs none: SQLite undoes a failed statement by
            // itself, unless it may keep part of its work (`OR FAIL`, or a
            // trigger's `RAISE(FAIL)`). Savepoints cost a copy of every page
            // a command touches first.
            let savepoint = statements.len() > 1
                || contains_ignore_case(&statements[0].sql, "fail")
                || self.has_triggers()?;
            if savepoint {
                run_cached(&self.conn, "SAVEPOINT command")?;
            }
            // SQLite's last insert rowid belongs to the connection: whatever
            // it last inserted, Shoal's own rows included, and nothing after
            // the base was reopened. A command reports only its own inserts
            // (0 before the first), the same on every replica.
            run_cached(&self.conn, RESET_LAST_INSERT_ROWID)?;
            let attempt =
                self.run_command(mode, index, &statements, transaction, limits, &failed, savepoint);
            let (results, kept) = match attempt {
                Ok(Attempt::Done { results, kept }) => (results, kept),
                Ok(Attempt::Lost { statement, error }) => {
                    // Start the command over on the recovered transaction,
                    // without what this attempt captured.
                    failed.insert(statement, error);
                    self.capture.end();
                    self.recover()?;
                    self.capture.begin();
                    continue;
                }
                Err(e) => {
                    self.abort_command(savepoint)?;
                    return Err(e);
                }
            };
            let finish = (|| {
                let answer = key
                    .map(|k| {
                        let answer = serde_json::to_string(&results)
                            .map(|json| idempotency::encode_answer(&json))
                            .map_err(|e| Error::Internal(e.to_string()))?;
                        idempotency::record(&self.conn, IDEMPOTENCY, k, index, &answer)?;
                        Ok::<_, Error>((k.to_string(), answer))
                    })
                    .transpose()?;
                if savepoint {
                    run_cached(&self.conn, "RELEASE command")?;
                }
                Ok(answer)
            })();
            let answer = match finish {
                Ok(answer) => answer,
                Err(e) => {
                    self.abort_command(savepoint)?;
                    return Err(e);
                }
            };
            // The statements that took effect, kept (moved, not copied)
            // until the next commit.
            let kept: Vec<Statement> = if kept.len() == statements.len() {
                statements
            } else {
                let mut kept = kept.into_iter().peekable();
                statements
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, s)| kept.next_if_eq(&i).map(|_| s))
                    .collect()
            };
            self.uncommitted_bytes += kept.iter().map(approximate_size).sum::<usize>()
                + answer.as_ref().map_or(0, |(k, a)| k.len() + a.len());
            self.uncommitted.push(Uncommitted { index, statements: kept, mode, key: answer });
            self.previous = previous;
            self.applied = Some(index);
            self.unwritten = true;
            return Ok(Executed::Applied(results));
        }
    }

    /// Runs a command's statements inside its savepoint.
    #[allow(clippy::too_many_arguments)]
    fn run_command(
        &mut self,
        mode: Mode,
        index: u64,
        statements: &[Statement],
        transaction: bool,
        limits: Limits,
        failed: &BTreeMap<usize, Error>,
        savepoints: bool,
    ) -> Result<Attempt> {
        let mut results = Vec::with_capacity(statements.len());
        let mut kept = Vec::with_capacity(statements.len());
        for (i, s) in statements.iter().enumerate() {
            if let Some(e) = failed.get(&i) {
                results.push(self.failure(e));
                continue;
            }
            // Only a statement that is not plain DML can change the schema
            // (DDL, for the feed's schema events).
            let version = if is_dml(&s.sql) { None } else { Some(schema_version(&self.conn)?) };
            let ddl = |conn: &Connection| -> Result<Option<&str>> {
                Ok(match version {
                    Some(v) if schema_version(conn)? != v => Some(s.sql.as_str()),
                    _ => None,
                })
            };
            let mark = self.capture.mark();
            if transaction {
                let r =
                    run_write(&self.conn, &self.guard, mode, limits, s).map_err(|e| match e {
                        Error::InvalidSql(m) if statements.len() > 1 => {
                            Error::InvalidSql(format!("statement {}: {m}", i + 1))
                        }
                        e => e,
                    })?;
                let ddl = ddl(&self.conn)?;
                if ddl.is_some() {
                    self.triggers = None;
                    self.changed_meta = true;
                }
                self.capture.finish_statement(&self.conn, index, ddl)?;
                results.push(r);
                kept.push(i);
                continue;
            }
            if savepoints {
                run_cached(&self.conn, "SAVEPOINT statement")?;
            }
            match run_write(&self.conn, &self.guard, mode, limits, s) {
                Ok(r) => {
                    let ddl = ddl(&self.conn)?;
                    if ddl.is_some() {
                        self.triggers = None;
                        self.changed_meta = true;
                    }
                    self.capture.finish_statement(&self.conn, index, ddl)?;
                    if savepoints {
                        run_cached(&self.conn, "RELEASE statement")?;
                    }
                    results.push(r);
                    kept.push(i);
                }
                Err(error) if error.is_deterministic() && self.conn.is_autocommit() => {
                    return Ok(Attempt::Lost { statement: i, error });
                }
                Err(e) if e.is_deterministic() => {
                    // Its changes leave the feed with it (without savepoints
                    // SQLite undid the statement itself).
                    if savepoints {
                        run_cached(&self.conn, "ROLLBACK TO statement")?;
                        run_cached(&self.conn, "RELEASE statement")?;
                    }
                    self.capture.rollback_to(mark);
                    results.push(self.failure(&e));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Attempt::Done { results, kept })
    }

    /// The result of a statement that failed on its own.
    fn failure(&self, e: &Error) -> ExecuteResult {
        ExecuteResult {
            rows_affected: 0,
            last_insert_rowid: self.conn.last_insert_rowid(),
            error: Some(e.to_body().error),
        }
    }

    /// Undoes what a command that failed did, keeping the commands before it.
    fn abort_command(&mut self, savepoint: bool) -> Result<()> {
        if self.conn.is_autocommit() {
            // SQLite rolled back everything: bring the others back.
            return self.recover();
        }
        if !savepoint {
            // A lone statement that failed was undone by SQLite.
            return Ok(());
        }
        run_cached(&self.conn, "ROLLBACK TO command")?;
        run_cached(&self.conn, "RELEASE command")
    }

    /// Whether the base has triggers (known once read; a schema change
    /// reads it again).
    fn has_triggers(&mut self) -> Result<bool> {
        if let Some(t) = self.triggers {
            return Ok(t);
        }
        let t = self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'trigger')")
            .and_then(|mut s| s.query_row([], |r| r.get::<_, bool>(0)))
            .map_err(map_sqlite_error)?;
        self.triggers = Some(t);
        Ok(t)
    }

    /// Runs one read-only statement.
    pub fn query(
        &mut self,
        sql: &str,
        params: &Params,
        options: &Options,
    ) -> Result<QueryResponse> {
        self.query_until(sql, params, options, Instant::now() + options.statement_timeout)
    }

    /// [`Base::query`], stopped at `deadline` rather than after the
    /// statement time limit.
    pub fn query_until(
        &mut self,
        sql: &str,
        params: &Params,
        options: &Options,
        deadline: Instant,
    ) -> Result<QueryResponse> {
        check_length(sql, options)?;
        self.recover()?;
        let guard = self.guard.clone();
        guard.enter(Mode::Read, Limits { read_deadline: Some(deadline), write_budget: 0 });
        let result = read(&self.conn, &guard, sql, params, options.max_result_rows);
        guard.leave();
        result
    }

    /// Runs `f` on the connection as Shoal (no sandbox). `f` must not write.
    pub fn read_system<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        self.recover()?;
        self.guard.leave();
        f(&self.conn)
    }

    /// The user tables of this base with their columns, ordered by name.
    pub fn tables(&mut self) -> Result<Vec<TableInfo>> {
        self.recover()?;
        self.guard.leave();
        let names: Vec<String> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
                     AND name NOT LIKE '\\_shoal\\_%' ESCAPE '\\' ORDER BY name",
                )
                .map_err(map_sqlite_error)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(map_sqlite_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(map_sqlite_error)?
        };
        names.into_iter().map(|n| self.table(&n)).collect()
    }

    /// One user table, or `NotFound`.
    pub fn table(&mut self, name: &str) -> Result<TableInfo> {
        self.guard.leave();
        if name.to_ascii_lowercase().starts_with("_shoal_")
            || name.to_ascii_lowercase().starts_with("sqlite_")
        {
            return Err(Error::NotFound(format!("no table named {name:?}")));
        }
        let mut stmt = self
            .conn
            .prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1)")
            .map_err(map_sqlite_error)?;
        let columns = stmt
            .query_map([name], |r| {
                Ok(ColumnInfo {
                    name: r.get(0)?,
                    type_: r.get(1)?,
                    notnull: r.get::<_, i64>(2)? != 0,
                    default: r.get(3)?,
                    pk: r.get(4)?,
                })
            })
            .map_err(map_sqlite_error)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(map_sqlite_error)?;
        if columns.is_empty() {
            return Err(Error::NotFound(format!("no table named {name:?}")));
        }
        // The table's own spelling, not the caller's.
        let name = self
            .conn
            .query_row(
                "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
                [name],
                |r| r.get(0),
            )
            .map_err(map_sqlite_error)?;
        Ok(TableInfo { name, columns })
    }

    /// A SHA-256 of the base's user content: every user object's schema and
    /// every row of every table, in a canonical order. Equal on replicas that
    /// hold the same data.
    pub fn checksum(&mut self) -> Result<String> {
        use sha2::Digest as _;
        self.recover()?;
        self.guard.leave();
        let mut h = sha2::Sha256::new();
        let objects: Vec<(String, String, String)> = {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT type, name, coalesce(sql, '') FROM sqlite_schema
                     WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_shoal\\_%' ESCAPE '\\'
                     ORDER BY type, name",
                )
                .map_err(map_sqlite_error)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(map_sqlite_error)?;
            rows.collect::<rusqlite::Result<_>>().map_err(map_sqlite_error)?
        };
        for (kind, name, sql) in &objects {
            for part in [kind, name, sql] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            if kind != "table" || sql.to_ascii_uppercase().starts_with("CREATE VIRTUAL") {
                continue;
            }
            // Every row in primary-key order (rowid, or the key of a
            // WITHOUT ROWID table, which is what a bare scan follows).
            let without_rowid = sql.to_ascii_uppercase().contains("WITHOUT ROWID");
            let order = if without_rowid { "" } else { " ORDER BY rowid" };
            let mut stmt = self
                .conn
                .prepare(&format!("SELECT * FROM {}{order}", crate::rows::quote(name)))
                .map_err(map_sqlite_error)?;
            let n = stmt.column_count();
            let mut rows = stmt.raw_query();
            while let Some(row) = rows.next().map_err(map_sqlite_error)? {
                for i in 0..n {
                    let v = sql_to_json(row.get_ref(i).map_err(map_sqlite_error)?).to_string();
                    h.update((v.len() as u64).to_le_bytes());
                    h.update(v.as_bytes());
                }
            }
        }
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Copies this base into a new file at `dest` with SQLite's online backup.
    pub fn backup_to(&mut self, dest: &Path) -> Result<()> {
        self.commit()?;
        self.conn.backup("main", dest, None).map_err(map_sqlite_error)
    }

    /// Replaces this base's content with the database file at `src`.
    pub fn restore_from(&mut self, src: &Path) -> Result<()> {
        self.guard.leave();
        self.applied = None;
        self.unwritten = false;
        self.triggers = None;
        // Whatever was applied is replaced.
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        if !self.conn.is_autocommit() {
            run_cached(&self.conn, "ROLLBACK")?;
        }
        self.conn
            .restore("main", src, None::<fn(rusqlite::backup::Progress)>)
            .map_err(map_sqlite_error)
    }
}

impl Drop for Base {
    /// A base leaves memory (evicted, closed, dropped) with what it applied
    /// committed. If that fails the base has lost commands that its bucket
    /// counts as applied, and serving on would let replicas diverge: the
    /// process stops, and the restart applies them again from the Raft log.
    fn drop(&mut self) {
        if self.uncommitted.is_empty() {
            return;
        }
        if let Err(error) = self.commit() {
            tracing::error!(%error, "a base could not commit what it applied; stopping");
            std::process::abort();
        }
    }
}

fn read_applied_index(conn: &Connection) -> Result<u64> {
    conn.prepare_cached("SELECT value FROM _shoal_meta WHERE key = 'applied_index'")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, i64>(0)))
        .map(|v| v as u64)
        .map_err(map_sqlite_error)
}

/// Runs a statement without parameters or results, prepared once.
fn run_cached(conn: &Connection, sql: &str) -> Result<()> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(|_| ()).map_err(map_sqlite_error)
}

/// About how many bytes a statement holds.
fn approximate_size(s: &Statement) -> usize {
    fn value(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::String(s) => s.len() + 24,
            serde_json::Value::Array(a) => a.iter().map(value).sum::<usize>() + 24,
            serde_json::Value::Object(o) => {
                o.iter().map(|(k, v)| k.len() + value(v)).sum::<usize>() + 24
            }
            _ => 16,
        }
    }
    let params: usize = match &s.params {
        Params::Positional(v) => v.iter().map(value).sum(),
        Params::Named(m) => m.iter().map(|(k, v)| k.len() + value(v)).sum(),
    };
    s.sql.len() + params
}

fn write_applied_index(conn: &Connection, index: u64) -> Result<()> {
    conn.prepare_cached("UPDATE _shoal_meta SET value = ?1 WHERE key = 'applied_index'")
        .and_then(|mut s| s.execute([index as i64]))
        .map(|_| ())
        .map_err(map_sqlite_error)
}

/// Whether `haystack` contains `needle` (ASCII, any case).
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack.as_bytes().windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Whether `sql` is plain DML (its first keyword, after whitespace and
/// comments, is SELECT, INSERT, UPDATE, DELETE, REPLACE, WITH or VALUES):
/// such a statement cannot change the schema. Anything else might.
fn is_dml(sql: &str) -> bool {
    let word = crate::first_keyword(sql);
    ["SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "VALUES"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

/// The schema's version: it moves whenever a statement changes the schema.
fn schema_version(conn: &Connection) -> Result<u32> {
    conn.prepare_cached("PRAGMA schema_version")
        .and_then(|mut s| s.query_row([], |r| r.get::<_, u32>(0)))
        .map_err(map_sqlite_error)
}

fn check_length(sql: &str, options: &Options) -> Result<()> {
    if sql.len() > options.max_sql_length {
        return Err(Error::LimitExceeded(format!(
            "the SQL text is {} bytes; the limit is {} bytes",
            sql.len(),
            options.max_sql_length
        )));
    }
    if sql.trim().is_empty() {
        return Err(Error::InvalidSql("the SQL text is empty".into()));
    }
    Ok(())
}

/// Turns a SQLite error into Shoal's, preferring the sandbox's reason.
fn sql_error(guard: &Guard, e: rusqlite::Error) -> Error {
    guard.take_refusal().unwrap_or_else(|| map_sqlite_error(e))
}

/// A statement that does not compile: if the text holds a second
/// statement, that is the mistake to report (the error may be the second
/// statement's, compiled before the first ran).
fn prepare_error(guard: &Guard, sql: &str, e: rusqlite::Error) -> Error {
    match sql_error(guard, e) {
        Error::InvalidSql(_) if crate::has_second_statement(sql) => Error::InvalidSql(
            "only one statement per SQL text; send several statements as a list".into(),
        ),
        other => other,
    }
}

fn is_vacuum(sql: &str) -> bool {
    let s = sql.trim_start();
    s.len() >= 6 && s[..6].eq_ignore_ascii_case("vacuum")
}

/// Longer statements are prepared each time instead of kept in the
/// connection's statement cache, so that the cache stays small.
const MAX_CACHED_SQL: usize = 4096;

/// How many prepared statements a base keeps: Shoal's own few and the
/// users' most recent writes.
const STATEMENT_CACHE: usize = 32;

fn run_write(
    conn: &Connection,
    guard: &Guard,
    mode: Mode,
    limits: Limits,
    s: &Statement,
) -> Result<ExecuteResult> {
    if is_vacuum(&s.sql) {
        return Err(Error::SqlNotAllowed("VACUUM is not allowed".into()));
    }
    guard.enter(mode, limits);
    let result = (|| {
        // Prepared under the write sandbox, so a cached statement passed
        // the same checks (SQLite re-prepares it, checks included, when the
        // schema changes). Reads never take statements from this cache.
        let (mut cached, mut plain);
        let stmt: &mut rusqlite::Statement = if s.sql.len() <= MAX_CACHED_SQL {
            cached = conn.prepare_cached(&s.sql).map_err(|e| prepare_error(guard, &s.sql, e))?;
            &mut cached
        } else {
            plain = conn.prepare(&s.sql).map_err(|e| prepare_error(guard, &s.sql, e))?;
            &mut plain
        };
        bind(stmt, &s.params)?;
        let before = conn.total_changes();
        let mut rows = stmt.raw_query();
        // Step to the end; rows a write returns (RETURNING) are not sent back.
        while rows.next().map_err(|e| sql_error(guard, e))?.is_some() {}
        drop(rows);
        // changes() keeps the count of the last INSERT, UPDATE or DELETE, even
        // across DDL; only report it when this statement changed rows.
        let changed = conn.total_changes() > before;
        Ok(ExecuteResult {
            rows_affected: if changed { conn.changes() } else { 0 },
            last_insert_rowid: conn.last_insert_rowid(),
            error: None,
        })
    })();
    guard.leave();
    result
}

fn read(
    conn: &Connection,
    guard: &Guard,
    sql: &str,
    params: &Params,
    max_rows: usize,
) -> Result<QueryResponse> {
    if is_vacuum(sql) {
        return Err(Error::SqlNotAllowed("VACUUM is not allowed".into()));
    }
    let mut stmt = conn.prepare(sql).map_err(|e| prepare_error(guard, sql, e))?;
    if !stmt.readonly() {
        return Err(Error::InvalidInput(
            "this statement writes; send it to /execute instead of /query".into(),
        ));
    }
    bind(&mut stmt, params)?;
    let columns: Vec<String> = stmt.column_names().into_iter().map(String::from).collect();
    let types: Vec<String> =
        stmt.columns().iter().map(|c| c.decl_type().unwrap_or("").to_string()).collect();
    let n = columns.len();
    let mut rows_out = Vec::new();
    let mut rows = stmt.raw_query();
    while let Some(row) = rows.next().map_err(|e| sql_error(guard, e))? {
        if rows_out.len() == max_rows {
            return Err(Error::LimitExceeded(format!(
                "the result has more than {max_rows} rows; page through it with LIMIT and OFFSET \
                 (or WHERE rowid > last seen)"
            )));
        }
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(sql_to_json(row.get_ref(i).map_err(map_sqlite_error)?));
        }
        rows_out.push(values);
    }
    Ok(QueryResponse { columns, types, rows: rows_out })
}

/// Default options with a shorter read time, for tests.
#[cfg(test)]
pub(crate) fn test_options() -> Options {
    Options { statement_timeout: std::time::Duration::from_millis(500), ..Options::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_types::api::Params;

    fn st(sql: &str) -> Statement {
        Statement { sql: sql.into(), params: Params::default() }
    }

    fn stp(sql: &str, p: serde_json::Value) -> Statement {
        Statement { sql: sql.into(), params: serde_json::from_value(p).unwrap() }
    }

    /// Runs an execute without an idempotency key; a replay gives no results.
    fn exec(
        b: &mut Base,
        index: u64,
        statements: &[Statement],
        transaction: bool,
        o: &Options,
    ) -> Result<Vec<ExecuteResult>> {
        Ok(match b.execute(index, statements.to_vec(), transaction, o, None)? {
            Executed::Applied(r) => r,
            Executed::Replayed => Vec::new(),
            Executed::Repeated { results, .. } => results,
        })
    }

    #[test]
    fn idempotency_keys_answer_once() {
        let mut b = base();
        let o = test_options();
        let ins = [st("INSERT INTO t (name) VALUES ('k')")];
        let first = b.execute(2, ins.to_vec(), true, &o, Some("key-1")).unwrap();
        let Executed::Applied(results) = first else { panic!("{first:?}") };
        // The retry (a later index, as after a failover) changes nothing and
        // gets the first answer and index.
        assert_eq!(
            b.execute(3, ins.to_vec(), true, &o, Some("key-1")).unwrap(),
            Executed::Repeated { index: 2, results }
        );
        assert_eq!(count(&mut b), 1);
        // A failed write is not recorded: its retry runs again.
        let dup = [st("INSERT INTO t (name) VALUES ('k')")];
        assert!(b.execute(4, dup.to_vec(), true, &o, Some("key-2")).is_err());
        assert!(b.execute(5, dup.to_vec(), true, &o, Some("key-2")).is_err());
        assert_eq!(count(&mut b), 1);
        // Keys are not user-visible tables.
        assert_eq!(b.tables().unwrap().len(), 1);
    }

    #[test]
    fn a_write_after_another_applies_only_once_that_one_has() {
        let mut b = base();
        let o = test_options();
        let ins = |name: &str| [st(&format!("INSERT INTO t (name) VALUES ('{name}')"))];
        // The write it follows has not been applied: nothing changes, the
        // key is not recorded, and the answer is a conflict.
        let second = ins("second");
        let early = b.execute_after(2, second.to_vec(), true, &o, Some("b"), Some("a"));
        assert!(matches!(early, Err(Error::Conflict(_))), "{early:?}");
        assert_eq!(count(&mut b), 0);
        // A failed write does not count either.
        let bad = [st("INSERT INTO t (name) VALUES (NULL)")];
        assert!(b.execute(3, bad.to_vec(), true, &o, Some("a")).is_err());
        assert!(b.execute_after(4, second.to_vec(), true, &o, Some("b"), Some("a")).is_err());
        // Once it is applied, the same write goes in after it.
        assert!(matches!(
            b.execute(5, ins("first").to_vec(), true, &o, Some("a")),
            Ok(Executed::Applied(_))
        ));
        let Executed::Applied(results) =
            b.execute_after(6, second.to_vec(), true, &o, Some("b"), Some("a")).unwrap()
        else {
            panic!("not applied")
        };
        let names: Vec<String> = b
            .conn
            .prepare("SELECT name FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(names, ["first", "second"]);
        // Its retry is a repeat, answered before `after` is looked at.
        assert_eq!(
            b.execute_after(7, second.to_vec(), true, &o, Some("b"), Some("gone")).unwrap(),
            Executed::Repeated { index: 6, results }
        );
    }

    fn base() -> Base {
        let mut b = Base::open(None).unwrap();
        exec(
            &mut b,
            1,
            &[st("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, at TEXT)")],
            true,
            &test_options(),
        )
        .unwrap();
        b
    }

    fn count(b: &mut Base) -> i64 {
        b.query("SELECT count(*) FROM t", &Params::default(), &test_options()).unwrap().rows[0][0]
            .as_i64()
            .unwrap()
    }

    #[test]
    fn failing_transaction_applies_nothing() {
        let mut b = base();
        let o = test_options();
        let err = exec(
            &mut b,
            2,
            &[
                stp("INSERT INTO t (name) VALUES (?)", json!(["a"])),
                st("INSERT INTO t (name) VALUES ('a')"),
            ],
            true,
            &o,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Constraint(_)), "{err:?}");
        assert_eq!(count(&mut b), 0);
        assert_eq!(b.applied_index().unwrap(), 1);
    }

    fn names(b: &mut Base) -> Vec<serde_json::Value> {
        b.query("SELECT name FROM t ORDER BY id", &Params::default(), &test_options())
            .unwrap()
            .rows
            .into_iter()
            .map(|mut r| r.remove(0))
            .collect()
    }

    /// `last_insert_rowid` counts only the request's own inserts, so a base
    /// that was reopened answers like one that was not.
    #[test]
    fn last_insert_rowid_is_the_requests_own() {
        let o = test_options();
        let dir = tempfile::tempdir().unwrap();
        let (mut kept, _) = file_base_with_a(dir.path());
        kept.commit().unwrap();
        let other = tempfile::tempdir().unwrap();
        let (mut reopened, other_path) = file_base_with_a(other.path());
        drop(reopened);
        reopened = Base::open(Some(&other_path)).unwrap();
        let commands: [(&[Statement], Option<&str>); 3] = [
            (&[st("UPDATE t SET name = 'a2' WHERE name = 'a'")], Some("k1")),
            (&[st("INSERT INTO t (name) VALUES ('b')"), st("UPDATE t SET name = 'b2'")], None),
            (&[st("DELETE FROM t WHERE name = 'nobody'")], Some("k2")),
        ];
        let mut answers = Vec::new();
        for b in [&mut kept, &mut reopened] {
            let mut rowids = Vec::new();
            for (i, (statements, key)) in commands.iter().enumerate() {
                let Executed::Applied(r) =
                    b.execute(3 + i as u64, statements.to_vec(), false, &o, *key).unwrap()
                else {
                    panic!("not applied")
                };
                rowids.push(r.iter().map(|r| r.last_insert_rowid).collect::<Vec<_>>());
            }
            answers.push(rowids);
        }
        // Nothing inserted yet in a request: 0, not Shoal's own rows (the
        // applied index, the idempotency keys) nor the previous request's.
        assert_eq!(answers[0], [vec![0], vec![2, 2], vec![0]]);
        assert_eq!(answers[0], answers[1]);
    }

    /// A base in a file in `dir` with table `t` and its row 'a', applied at
    /// indexes 1 and 2 and not committed.
    fn file_base_with_a(dir: &Path) -> (Base, std::path::PathBuf) {
        let path = dir.join("b.db");
        let o = test_options();
        let mut b = Base::open(Some(&path)).unwrap();
        let create = st("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)");
        exec(&mut b, 1, &[create], true, &o).unwrap();
        exec(&mut b, 2, &[st("INSERT INTO t (name) VALUES ('a')")], true, &o).unwrap();
        (b, path)
    }

    /// Statements whose failure makes SQLite roll back the whole open
    /// transaction (an interrupted write, `OR ROLLBACK`) must not take the
    /// commands applied before them, and not yet committed, with them.
    #[test]
    fn a_rolled_back_transaction_keeps_the_commands_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let o = Options { max_write_steps: 100_000, ..test_options() };
        let (mut b, path) = file_base_with_a(dir.path());
        assert!(b.has_uncommitted());

        // Standing alone: the failing statement reports its error, the
        // others apply, and so does everything before.
        let endless = "INSERT INTO t (name) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL \
                       SELECT x+1 FROM c) SELECT 'n' || x FROM c";
        let r = exec(
            &mut b,
            3,
            &[
                st("INSERT INTO t (name) VALUES ('b')"),
                st("INSERT OR ROLLBACK INTO t (name) VALUES ('a')"),
                st("INSERT INTO t (name) VALUES ('c')"),
                st(endless),
                st("INSERT INTO t (name) VALUES ('d')"),
            ],
            false,
            &o,
        )
        .unwrap();
        let codes: Vec<Option<String>> =
            r.iter().map(|r| r.error.as_ref().map(|e| e.code.clone())).collect();
        assert_eq!(
            codes,
            [None, Some("constraint_violation".into()), None, Some("limit_exceeded".into()), None]
        );
        assert_eq!(names(&mut b), [json!("a"), json!("b"), json!("c"), json!("d")]);
        assert_eq!(b.applied_index().unwrap(), 3);

        // All or nothing: the command fails, the ones before stay.
        let err = exec(
            &mut b,
            4,
            &[
                st("INSERT INTO t (name) VALUES ('e')"),
                st("INSERT OR ROLLBACK INTO t (name) VALUES ('b')"),
            ],
            true,
            &o,
        )
        .unwrap_err();
        assert_eq!(err.code(), "constraint_violation", "{err:?}");
        assert_eq!(names(&mut b), [json!("a"), json!("b"), json!("c"), json!("d")]);
        assert_eq!(b.applied_index().unwrap(), 3);

        // What was applied reaches the file when the base closes.
        drop(b);
        let mut b = Base::open(Some(&path)).unwrap();
        assert_eq!(names(&mut b), [json!("a"), json!("b"), json!("c"), json!("d")]);
        assert_eq!(b.applied_index().unwrap(), 3);
    }

    /// The same right after a commit, with no command to bring back: the
    /// command and the ones after it still run inside the shared
    /// transaction, and nothing is applied twice.
    #[test]
    fn a_rolled_back_transaction_right_after_a_commit_applies_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let o = test_options();
        let (mut b, path) = file_base_with_a(dir.path());
        b.commit().unwrap();
        let r = exec(
            &mut b,
            3,
            &[
                st("INSERT INTO t (name) VALUES ('b')"),
                st("INSERT OR ROLLBACK INTO t (name) VALUES ('a')"),
                st("INSERT INTO t (name) VALUES ('c')"),
            ],
            false,
            &o,
        )
        .unwrap();
        assert!(r[1].error.is_some() && r[0].error.is_none() && r[2].error.is_none(), "{r:?}");
        exec(&mut b, 4, &[st("INSERT INTO t (name) VALUES ('d')")], true, &o).unwrap();
        exec(&mut b, 5, &[st("INSERT INTO t (name) VALUES ('e')")], true, &o).unwrap();
        let all = [json!("a"), json!("b"), json!("c"), json!("d"), json!("e")];
        assert_eq!(names(&mut b), all);
        assert!(b.has_uncommitted());
        drop(b);
        let mut b = Base::open(Some(&path)).unwrap();
        assert_eq!(names(&mut b), all);
        assert_eq!(b.applied_index().unwrap(), 5);
    }

    /// Applied commands are visible on the base at once, and in the file
    /// once committed.
    #[test]
    fn applied_commands_reach_the_file_on_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, path) = file_base_with_a(dir.path());
        let in_file = || {
            let c = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
            c.query_row("SELECT value FROM _shoal_meta WHERE key = 'applied_index'", [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
        };
        assert_eq!(names(&mut b), [json!("a")]);
        assert_eq!(in_file(), 0);
        b.commit().unwrap();
        assert!(!b.has_uncommitted());
        assert_eq!(in_file(), 2);
    }

    #[test]
    fn the_applied_index_survives_a_reopen_and_start_at() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, path) = file_base_with_a(dir.path());
        // Moving the start keeps what was applied in memory but not yet
        // written.
        b.start_at(1).unwrap();
        assert_eq!(b.applied_index().unwrap(), 2);
        drop(b);
        let b = Base::open(Some(&path)).unwrap();
        assert_eq!(b.applied_index().unwrap(), 2);
    }

    #[test]
    fn a_base_of_an_unknown_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (b, path) = file_base_with_a(dir.path());
        drop(b);
        let c = Connection::open(&path).unwrap();
        c.execute("UPDATE _shoal_meta SET value = 7 WHERE key = 'format'", []).unwrap();
        drop(c);
        match Base::open(Some(&path)) {
            Err(Error::InvalidData(m)) => assert!(m.contains("format 7"), "{m}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a base of format 7 opened"),
        }
    }

    #[test]
    fn only_plain_dml_skips_the_schema_check() {
        for sql in [
            "SELECT 1",
            "  insert into t values (1)",
            "-- c\nUPDATE t SET a = 1",
            "/* x */ WITH a AS (SELECT 1) DELETE FROM t",
            "replace into t values (1)",
            "VALUES (1)",
        ] {
            assert!(is_dml(sql), "{sql}");
        }
        for sql in [
            "CREATE TABLE x (a)",
            "/* unterminated SELECT",
            "-- only a comment",
            "ALTER TABLE t ADD b",
            "drop table t",
            "PRAGMA user_version = 1",
            "",
            "SELECTX",
        ] {
            assert!(!is_dml(sql), "{sql}");
        }
    }

    #[test]
    fn a_schema_change_is_still_seen_after_dml() {
        let mut b = base();
        let o = test_options();
        exec(
            &mut b,
            2,
            &[st("INSERT INTO t (name) VALUES ('x')"), st("/* c */ CREATE TABLE u (a)")],
            true,
            &o,
        )
        .unwrap();
        let (_, events) = b.take_changes();
        let ddl: Vec<_> = events.iter().filter_map(|e| e.sql.clone()).collect();
        assert_eq!(ddl, vec!["/* c */ CREATE TABLE u (a)".to_string()], "{events:?}");
    }

    #[test]
    fn a_lone_statement_that_fails_part_way_leaves_nothing() {
        let mut b = base();
        let o = test_options();
        exec(&mut b, 2, &[st("INSERT INTO t (name) VALUES ('dup')")], true, &o).unwrap();
        // Without OR FAIL SQLite undoes the statement itself.
        assert!(
            exec(&mut b, 3, &[st("INSERT INTO t (name) VALUES ('a'), ('dup')")], true, &o).is_err()
        );
        // OR FAIL keeps the rows before the failure: the command's savepoint
        // must undo them.
        assert!(
            exec(&mut b, 4, &[st("INSERT OR FAIL INTO t (name) VALUES ('b'), ('dup')")], true, &o)
                .is_err()
        );
        assert_eq!(count(&mut b), 1);
        // So must it for a trigger that raises FAIL after writing.
        exec(&mut b, 5, &[st("CREATE TABLE u (a)")], true, &o).unwrap();
        let trigger = "CREATE TRIGGER t_bad AFTER INSERT ON t WHEN NEW.name = 'bad' \
                       BEGIN INSERT INTO u VALUES (1); SELECT RAISE(FAIL, 'bad name'); END";
        exec(&mut b, 6, &[st(trigger)], true, &o).unwrap();
        assert!(exec(&mut b, 7, &[st("INSERT INTO t (name) VALUES ('bad')")], true, &o).is_err());
        let in_u: i64 = b.conn.query_row("SELECT count(*) FROM u", [], |r| r.get(0)).unwrap();
        assert_eq!((count(&mut b), in_u), (1, 0));
        // And the next command applies as usual.
        exec(&mut b, 8, &[st("INSERT INTO t (name) VALUES ('ok')")], true, &o).unwrap();
        assert_eq!(count(&mut b), 2);
    }

    #[test]
    fn non_transactional_statements_stand_alone() {
        let mut b = base();
        let r = exec(
            &mut b,
            2,
            &[st("INSERT INTO t (name) VALUES ('a')"), st("INSERT INTO t (name) VALUES ('a')")],
            false,
            &test_options(),
        )
        .unwrap();
        assert_eq!(r[0].rows_affected, 1);
        assert_eq!(r[1].error.as_ref().unwrap().code, "constraint_violation");
        assert_eq!(count(&mut b), 1);
        assert_eq!(b.applied_index().unwrap(), 2);
    }

    #[test]
    fn replayed_index_is_skipped() {
        let mut b = base();
        let o = test_options();
        exec(&mut b, 5, &[st("INSERT INTO t (name) VALUES ('a')")], true, &o).unwrap();
        assert!(
            exec(&mut b, 5, &[st("INSERT INTO t (name) VALUES ('b')")], true, &o)
                .unwrap()
                .is_empty()
        );
        assert_eq!(count(&mut b), 1);
    }

    #[test]
    fn sandbox_refuses_escapes() {
        let mut b = base();
        let o = test_options();
        for sql in [
            "ATTACH DATABASE '/tmp/x.db' AS x",
            "PRAGMA journal_mode = DELETE",
            "PRAGMA writable_schema",
            "BEGIN",
            "SAVEPOINT x",
            "SELECT load_extension('x')",
            "VACUUM INTO '/tmp/y.db'",
            "DELETE FROM _shoal_meta",
            "CREATE TABLE _shoal_x (a)",
        ] {
            let err = exec(&mut b, 10, &[st(sql)], true, &o).unwrap_err();
            assert!(matches!(err, Error::SqlNotAllowed(_)), "{sql}: {err:?}");
            let err = b.query(sql, &Params::default(), &o).unwrap_err();
            assert!(
                matches!(err, Error::SqlNotAllowed(_) | Error::InvalidInput(_)),
                "{sql}: {err:?}"
            );
        }
        assert!(b.query("PRAGMA table_info(t)", &Params::default(), &o).is_ok());
        assert_eq!(b.applied_index().unwrap(), 1);
    }

    #[test]
    fn non_deterministic_writes_are_refused() {
        let mut b = base();
        let o = test_options();
        for sql in [
            "INSERT INTO t (name) VALUES (random())",
            "INSERT INTO t (name) VALUES (hex(randomblob(4)))",
            "INSERT INTO t (name, at) VALUES ('x', CURRENT_TIMESTAMP)",
            "INSERT INTO t (name, at) VALUES ('x', datetime('now'))",
            "INSERT INTO t (name, at) VALUES ('x', date())",
            "INSERT INTO t (name, at) VALUES ('x', strftime('%s', 'now'))",
            "INSERT INTO t (name, at) VALUES ('x', datetime('2024-01-01', 'localtime'))",
        ] {
            let err = exec(&mut b, 10, &[st(sql)], true, &o).unwrap_err();
            assert!(matches!(err, Error::NonDeterministic(_)), "{sql}: {err:?}");
            assert!(err.to_string().contains("parameter"), "{err}");
        }
        let err = exec(
            &mut b,
            10,
            &[stp("INSERT INTO t (name, at) VALUES ('x', date(?))", json!(["now"]))],
            true,
            &o,
        )
        .unwrap_err();
        assert!(matches!(err, Error::NonDeterministic(_)), "{err:?}");
        assert_eq!(count(&mut b), 0);
        // Defaults are evaluated without asking the authorizer; they are
        // refused when they run.
        let ddl = "CREATE TABLE d (a DEFAULT (random()), b, at DEFAULT CURRENT_TIMESTAMP)";
        exec(&mut b, 20, &[st(ddl)], true, &o).unwrap();
        for sql in ["INSERT INTO d (b, at) VALUES (1, 'x')", "INSERT INTO d (a, b) VALUES (1, 2)"] {
            let err = exec(&mut b, 21, &[st(sql)], true, &o).unwrap_err();
            assert!(matches!(err, Error::NonDeterministic(_)), "{sql}: {err:?}");
        }
        exec(&mut b, 21, &[st("INSERT INTO d (a, b, at) VALUES (1, 2, 'x')")], true, &o).unwrap();
        let sql = "SELECT random() != 0 OR 1, length(randomblob(4)), length(CURRENT_DATE)";
        let r = b.query(sql, &Params::default(), &o).unwrap();
        assert_eq!(r.rows[0], vec![json!(1), json!(4), json!(10)]);
        // DDL reports no affected rows, even right after a DML statement.
        let stmts = [st("INSERT INTO d (a, b, at) VALUES (2, 2, 'x')"), st("CREATE TABLE e (a)")];
        let r = exec(&mut b, 22, &stmts, true, &o).unwrap();
        assert_eq!((r[0].rows_affected, r[1].rows_affected), (1, 0));
        // A fixed time is fine and computed as SQLite would.
        exec(
            &mut b,
            23,
            &[stp(
                "INSERT INTO t (name, at) VALUES ('x', datetime(?, '+1 day'))",
                json!(["2024-01-01 10:00:00"]),
            )],
            true,
            &o,
        )
        .unwrap();
        let r = b
            .query(
                "SELECT at, date('now') IS NOT NULL, random() IS NOT NULL FROM t",
                &Params::default(),
                &o,
            )
            .unwrap();
        assert_eq!(r.rows[0], vec![json!("2024-01-02 10:00:00"), json!(1), json!(1)]);
    }

    #[test]
    fn limits_are_enforced() {
        let mut b = base();
        let o = Options {
            max_result_rows: 3,
            max_sql_length: 100,
            max_write_steps: 100_000,
            ..test_options()
        };
        let err = b.query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 10) SELECT x FROM c", &Params::default(), &o)
            .unwrap_err();
        assert!(
            matches!(err, Error::LimitExceeded(_)) && err.to_string().contains("LIMIT"),
            "{err:?}"
        );
        let err =
            b.query(&format!("SELECT '{}'", "x".repeat(200)), &Params::default(), &o).unwrap_err();
        assert!(matches!(err, Error::LimitExceeded(_)), "{err:?}");
        let err = b
            .query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c", &Params::default(), &o)
            .unwrap_err();
        assert!(matches!(err, Error::LimitExceeded(_)), "{err:?}");
        let err = exec(&mut b,
                2,
                &[st("INSERT INTO t (name) WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c")],
                true,
                &o,
            )
            .unwrap_err();
        assert!(matches!(err, Error::LimitExceeded(_)), "{err:?}");
        assert_eq!(count(&mut b), 0);
    }

    #[test]
    fn query_refuses_writes_and_bad_sql() {
        let mut b = base();
        let o = test_options();
        let err = b.query("DELETE FROM t", &Params::default(), &o).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
        let err = b.query("SELEC 1", &Params::default(), &o).unwrap_err();
        assert!(matches!(err, Error::InvalidSql(_)), "{err:?}");
        let err = b.query("SELECT 1; SELECT 2", &Params::default(), &o).unwrap_err();
        assert!(matches!(err, Error::InvalidSql(_)), "{err:?}");
        let err = b.query("SELECT ?", &Params::default(), &o).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    }

    #[test]
    fn named_params_and_types() {
        let mut b = base();
        let o = test_options();
        exec(
            &mut b,
            2,
            &[stp(
                "INSERT INTO t (name, at) VALUES (:n, $a)",
                json!({"n": "x", "$a": {"base64": "AAE="}}),
            )],
            true,
            &o,
        )
        .unwrap();
        let r = b
            .query(
                "SELECT id, name, at FROM t WHERE name = @n",
                &serde_json::from_value(json!({"n": "x"})).unwrap(),
                &o,
            )
            .unwrap();
        assert_eq!(r.columns, ["id", "name", "at"]);
        assert_eq!(r.types, ["INTEGER", "TEXT", "TEXT"]);
        assert_eq!(r.rows, vec![vec![json!(1), json!("x"), json!({"base64": "AAE="})]]);
    }

    #[test]
    fn tables_hide_internal_ones() {
        let mut b = base();
        let t = b.tables().unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "t");
        assert_eq!(
            t[0].columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["id", "name", "at"]
        );
        assert!(matches!(b.table("nope"), Err(Error::NotFound(_))));
        assert!(matches!(b.table("_shoal_meta"), Err(Error::NotFound(_))));
    }
}
