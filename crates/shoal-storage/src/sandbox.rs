//! The SQL sandbox: what user SQL may do inside a base.
//!
//! Three SQLite hooks enforce it, installed once per connection and steered by
//! a shared [`Guard`] that says whose statement is being prepared or run:
//!
//! - the **authorizer** refuses, at prepare time, what would escape the base
//!   (ATTACH, DETACH, load_extension), change the connection (PRAGMAs other
//!   than a read-only allow-list), take over transaction control (BEGIN,
//!   COMMIT, SAVEPOINT: Shoal owns the transaction so it can record the
//!   applied log index in it), touch Shoal's own `_shoal_*` tables, or, in a
//!   write, call a function whose result differs between replicas (`random()`,
//!   `CURRENT_TIMESTAMP`, ...);
//! - the **progress handler** bounds work: reads by wall-clock time, writes by
//!   a budget of virtual-machine steps. A write's bound must be deterministic:
//!   a write that stops on one replica because its disk was slow and completes
//!   on another would make the replicas differ. Step counts are the same
//!   everywhere for the same SQLite build and data;
//! - the **date and time functions** are replaced by versions that, in a
//!   write, refuse `'now'`, no-argument calls (which mean now) and the
//!   `localtime`/`utc` modifiers (which depend on the machine's time zone),
//!   and otherwise compute exactly what SQLite's own functions compute.
//!
//! When a hook refuses, it records the reason in the guard; the caller turns
//! SQLite's generic "not authorized" or "interrupted" error into that reason.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rusqlite::functions::{Context, FunctionFlags};
use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, params_from_iter};
use shoal_types::Error;

/// How often (in VM instructions) the progress handler runs.
pub const PROGRESS_PERIOD: i32 = 1000;

/// PRAGMAs a user may run: read-only schema introspection. Their argument
/// names a table or index, so any argument is fine.
const ALLOWED_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "collation_list",
];

/// PRAGMAs a user may read but not set (with a value they would write).
const READABLE_PRAGMAS: &[&str] =
    &["user_version", "schema_version", "data_version", "page_count", "freelist_count"];

/// Functions whose result differs between replicas, refused in writes.
const RANDOM_FUNCTIONS: &[&str] = &["random", "randomblob"];

/// SQL keywords that read the clock, refused in writes.
const CLOCK_KEYWORDS: &[&str] = &["current_time", "current_date", "current_timestamp"];

/// SQLite's date and time functions, replaced to refuse the clock in writes.
const DATE_FUNCTIONS: &[&str] =
    &["date", "time", "datetime", "julianday", "unixepoch", "strftime", "timediff"];

/// Whose statement is being prepared or run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Shoal's own statements: anything goes.
    Internal,
    /// A user's read: bounded by wall-clock time.
    Read,
    /// A user's write: bounded by VM steps, deterministic functions only.
    Write,
    /// A write Shoal composed for a user (the SeaTable API, API tokens):
    /// a write in every way, but it may change Shoal's own `_shoal_*` tables.
    System,
}

impl Mode {
    /// Whether statements in this mode change the base, and so must be
    /// deterministic and bounded by steps.
    fn writes(self) -> bool {
        matches!(self, Mode::Write | Mode::System)
    }
}

/// A table user SQL may not even read: it holds credentials (hashed).
pub const SECRET_TABLE: &str = "_shoal_api_tokens";

/// Limits on user SQL.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The wall-clock time a read may take.
    pub read_deadline: Option<Instant>,
    /// The VM steps a write may take, in units of [`PROGRESS_PERIOD`] steps.
    pub write_budget: u64,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    limits: Limits,
    /// Progress handler calls since the statement started.
    ticks: u64,
    /// Why the last refusal happened.
    refused: Option<Error>,
}

/// The shared state that steers the hooks of one connection.
#[derive(Clone, Debug)]
pub struct Guard(Arc<Mutex<State>>);

impl Guard {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent:
        // every field is overwritten before use.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets whose statements run next, and their limits.
    pub fn enter(&self, mode: Mode, limits: Limits) {
        let mut s = self.lock();
        s.mode = mode;
        s.limits = limits;
        s.ticks = 0;
        s.refused = None;
    }

    /// Back to Shoal's own statements.
    pub fn leave(&self) {
        self.enter(Mode::Internal, Limits { read_deadline: None, write_budget: 0 });
    }

    /// Takes the reason of the last refusal, if any.
    pub fn take_refusal(&self) -> Option<Error> {
        self.lock().refused.take()
    }

    fn refuse(&self, e: Error) {
        self.lock().refused = Some(e);
    }

    fn mode(&self) -> Mode {
        self.lock().mode
    }
}

/// Installs the sandbox on a connection and returns the guard that steers it.
pub fn install(conn: &Connection) -> rusqlite::Result<Guard> {
    let guard = Guard(Arc::new(Mutex::new(State {
        mode: Mode::Internal,
        limits: Limits { read_deadline: None, write_budget: 0 },
        ticks: 0,
        refused: None,
    })));

    let g = guard.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| authorize(&g, ctx)));

    let g = guard.clone();
    conn.progress_handler(PROGRESS_PERIOD, Some(move || progress(&g)));

    // The authorizer sees calls written in a statement, but not those in a
    // column DEFAULT, which SQLite evaluates without asking. These
    // replacements refuse at run time, wherever the call comes from.
    for (name, args) in
        [("random", 0), ("randomblob", 1)].into_iter().chain(CLOCK_KEYWORDS.iter().map(|k| (*k, 0)))
    {
        let g = guard.clone();
        conn.create_scalar_function(name, args, FunctionFlags::SQLITE_UTF8, move |ctx| {
            clock_or_random(&g, name, ctx)
        })?;
    }
    for name in DATE_FUNCTIONS {
        let g = guard.clone();
        conn.create_scalar_function(
            *name,
            -1,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            move |ctx| date_function(&g, name, ctx),
        )?;
    }
    Ok(guard)
}

fn authorize(guard: &Guard, ctx: AuthContext<'_>) -> Authorization {
    let mode = guard.mode();
    if mode == Mode::Internal {
        return Authorization::Allow;
    }
    match check(mode, ctx.action) {
        Ok(()) => Authorization::Allow,
        Err(e) => {
            guard.refuse(e);
            Authorization::Deny
        }
    }
}

fn check(mode: Mode, action: AuthAction<'_>) -> Result<(), Error> {
    let not_allowed = |what: String| Err(Error::SqlNotAllowed(what));
    match action {
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            not_allowed("ATTACH and DETACH are not allowed: a base is a single database".into())
        }
        AuthAction::Pragma { pragma_name, pragma_value } => {
            let name = pragma_name.to_ascii_lowercase();
            if ALLOWED_PRAGMAS.contains(&name.as_str())
                || (pragma_value.is_none() && READABLE_PRAGMAS.contains(&name.as_str()))
            {
                Ok(())
            } else {
                not_allowed(format!(
                    "PRAGMA {pragma_name} is not allowed; allowed: {}, and reading {}",
                    ALLOWED_PRAGMAS.join(", "),
                    READABLE_PRAGMAS.join(", ")
                ))
            }
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => not_allowed(
            "BEGIN, COMMIT, ROLLBACK and SAVEPOINT are not allowed: send the statements together in one \
             execute request, which runs them in one transaction"
                .into(),
        ),
        AuthAction::Function { function_name } => {
            let name = function_name.to_ascii_lowercase();
            if name == "load_extension" {
                return not_allowed("load_extension() is not allowed".into());
            }
            if mode.writes()
                && (RANDOM_FUNCTIONS.contains(&name.as_str()) || CLOCK_KEYWORDS.contains(&name.as_str()))
            {
                return Err(refusal(&name));
            }
            Ok(())
        }
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateTempTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::CreateVtable { table_name, .. } if mode != Mode::System => {
            reserved(table_name)
        }
        AuthAction::CreateView { view_name } if mode != Mode::System => reserved(view_name),
        AuthAction::Read { table_name, .. }
            if mode != Mode::System && table_name.eq_ignore_ascii_case(SECRET_TABLE) =>
        {
            not_allowed(format!("{SECRET_TABLE} holds credentials and cannot be read with SQL"))
        }
        _ => Ok(()),
    }
}

fn reserved(name: &str) -> Result<(), Error> {
    if name.to_ascii_lowercase().starts_with("_shoal_") {
        Err(Error::SqlNotAllowed(format!("{name:?}: names starting with _shoal_ are reserved")))
    } else {
        Ok(())
    }
}

fn progress(guard: &Guard) -> bool {
    let mut s = guard.lock();
    s.ticks += 1;
    let stop = match s.mode {
        Mode::Internal => None,
        Mode::Read => s.limits.read_deadline.filter(|d| Instant::now() >= *d).map(|_| {
            Error::LimitExceeded(
                "the query took longer than the statement time limit; narrow it down or page through it".into(),
            )
        }),
        Mode::Write | Mode::System => (s.ticks > s.limits.write_budget).then(|| {
            Error::LimitExceeded(format!(
                "the write exceeded its budget of {} SQLite steps; split it into smaller writes",
                s.limits.write_budget * PROGRESS_PERIOD as u64
            ))
        }),
    };
    match stop {
        Some(e) => {
            s.refused = Some(e);
            true
        }
        None => false,
    }
}

thread_local! {
    /// A private connection with SQLite's own date functions, used to compute
    /// the replaced functions' results exactly as SQLite would.
    static PLAIN: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

fn refusal(name: &str) -> Error {
    if RANDOM_FUNCTIONS.contains(&name) {
        Error::NonDeterministic(format!(
            "{name}() is not allowed in a write (here or in a column DEFAULT): replicas would store \
             different values; generate the value in the client and pass it as a parameter"
        ))
    } else {
        Error::NonDeterministic(format!(
            "{} is not allowed in a write (here or in a column DEFAULT): replicas would store \
             different times; pass the time as a parameter instead, e.g. \"VALUES (?)\" with \
             [\"2024-01-01 12:00:00\"]",
            name.to_ascii_uppercase()
        ))
    }
}

/// `random()`, `randomblob()` and `CURRENT_*`: refused in writes, SQLite's
/// own in reads.
fn clock_or_random(guard: &Guard, name: &str, ctx: &Context<'_>) -> rusqlite::Result<SqlValue> {
    if guard.mode().writes() {
        let e = refusal(name);
        guard.refuse(e.clone());
        return Err(rusqlite::Error::UserFunctionError(Box::new(e)));
    }
    plain(name, ctx)
}

/// Computes `name(args)` with SQLite's own functions, on a private connection.
fn plain(name: &str, ctx: &Context<'_>) -> rusqlite::Result<SqlValue> {
    let args: Vec<SqlValue> =
        (0..ctx.len()).map(|i| ctx.get::<SqlValue>(i)).collect::<rusqlite::Result<_>>()?;
    PLAIN.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Connection::open_in_memory()?);
        }
        let conn = slot.as_ref().expect("opened above");
        // CURRENT_* are keywords, not callable with parentheses.
        let call = if CLOCK_KEYWORDS.contains(&name) {
            name.to_string()
        } else {
            format!("{name}({})", vec!["?"; args.len()].join(","))
        };
        let mut stmt = conn.prepare_cached(&format!("SELECT {call}"))?;
        stmt.query_row(params_from_iter(args.iter()), |row| row.get::<_, SqlValue>(0))
    })
}

fn date_function(guard: &Guard, name: &str, ctx: &Context<'_>) -> rusqlite::Result<SqlValue> {
    let args: Vec<SqlValue> =
        (0..ctx.len()).map(|i| ctx.get::<SqlValue>(i)).collect::<rusqlite::Result<_>>()?;
    if guard.mode().writes() {
        // strftime's first argument is the format, not a time value.
        let times = if name == "strftime" { args.get(1..).unwrap_or(&[]) } else { &args[..] };
        let reads_clock = times.is_empty()
            || times.iter().any(|a| {
                matches!(a, SqlValue::Text(t)
                    if ["now", "localtime", "utc"].iter().any(|w| t.trim().eq_ignore_ascii_case(w)))
            });
        if reads_clock {
            let e = Error::NonDeterministic(format!(
                "{name}() with 'now', no time value, 'localtime' or 'utc' is not allowed in a write: replicas \
                 would store different times; pass the time as a parameter instead, e.g. {name}(?) with \
                 [\"2024-01-01 12:00:00\"]"
            ));
            guard.refuse(e.clone());
            return Err(rusqlite::Error::UserFunctionError(Box::new(e)));
        }
    }
    plain(name, ctx)
}
