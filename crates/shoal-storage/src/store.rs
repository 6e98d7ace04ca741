//! The store: every bucket's bases on this node, under one data directory
//! (`buckets/{bucket}/{base}.db` plus `buckets/{bucket}/catalog.db`), or all
//! in memory.
//!
//! Bases open lazily and an LRU bounds how many are open, so a node with
//! 100 000 idle bases holds none of them in memory: listing reads the
//! catalogs, which hold a row per base. In memory mode nothing is evicted,
//! because closing an in-memory database would lose it.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use lru::LruCache;
use shoal_types::api::{BaseInfo, Params, QueryResponse, TableInfo};
use shoal_types::{BUCKET_COUNT, BaseId, BucketId, Error, Result};

use crate::base::{Base, Executed};
use crate::catalog::{Applied, Catalog};
use crate::command::{Command, Output};
use crate::feed::{FeedOptions, Hub, Subscription};
use crate::seatable;

/// Bounds on user SQL and on open files.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many bases may be open at once (files and their caches).
    pub max_open_bases: usize,
    /// The longest SQL text accepted, in bytes.
    pub max_sql_length: usize,
    /// The most rows a query may return; larger results must be paged.
    pub max_result_rows: usize,
    /// How long a read may run.
    pub statement_timeout: Duration,
    /// How many SQLite virtual-machine steps one write statement may take.
    /// A step budget rather than a time, so that every replica stops at the
    /// same point.
    pub max_write_steps: u64,
    /// What the change feed keeps.
    pub feed: FeedOptions,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_open_bases: 1024,
            max_sql_length: 100_000,
            max_result_rows: 10_000,
            statement_timeout: Duration::from_secs(5),
            max_write_steps: 100_000_000,
            feed: FeedOptions::default(),
        }
    }
}

/// Which bases a list returns.
#[derive(Clone, Debug, Default)]
pub struct BaseFilter {
    /// Only the bases of this bucket.
    pub bucket: Option<BucketId>,
    /// Only the bases whose id starts with this text or whose name contains
    /// it, in any case; empty: all.
    pub text: String,
}

/// All bases of this node.
pub struct Store {
    dir: Option<PathBuf>,
    options: Options,
    open: Mutex<LruCache<BaseId, Arc<Mutex<Base>>>>,
    catalogs: Mutex<Vec<Option<Arc<Mutex<Catalog>>>>>,
    /// Held by every apply and for a whole snapshot or restore of the
    /// bucket, so a snapshot is one consistent point of the bucket. Holds
    /// what the bucket changed since its last sync.
    buckets: Vec<Mutex<Unsynced>>,
    /// Taken (shared) to open a bucket's catalog or base files, and
    /// (exclusively) while the bucket's files are replaced or removed: a
    /// read must not open a file that is not there yet, which would make
    /// an empty one (a base without its tables, or worse, a file the copy
    /// then writes under an open connection).
    files: Vec<RwLock<()>>,
    /// The change feed: what applies published.
    feed: Hub,
    /// Per bucket: moves whenever a base of the bucket may have changed its
    /// schema or Shoal's own tables in it, or was created, dropped or
    /// replaced; it moves after the change, before the command's answer.
    /// What was read of those while it held one value still holds while it
    /// does.
    meta_versions: Vec<AtomicU64>,
    /// The SeaTable catalogs and API tokens last read, with the bucket's
    /// meta version read before reading them.
    seatable: Mutex<LruCache<BaseId, (u64, Arc<seatable::Loaded>)>>,
}

/// The files of a bucket written since they were last fsync'd.
#[derive(Default)]
struct Unsynced {
    catalog: bool,
    bases: BTreeSet<BaseId>,
}

/// fsyncs a file or directory; one that does not exist has nothing to sync.
fn sync_file(path: &Path) -> Result<()> {
    match std::fs::File::open(path) {
        Ok(f) => Ok(f.sync_all()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Poisoning means a panic elsewhere; SQLite's own state stays consistent,
    // so carry on rather than fail every later request.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens the store under `dir`, or in memory when `dir` is `None`.
    pub fn open(dir: Option<&Path>, options: Options) -> Result<Store> {
        let cap = NonZeroUsize::new(options.max_open_bases);
        let open = match dir {
            Some(d) => {
                std::fs::create_dir_all(d.join("buckets"))?;
                let cap = cap.ok_or_else(|| {
                    Error::InvalidInput("max_open_bases must be at least 1".into())
                })?;
                LruCache::new(cap)
            }
            None => LruCache::unbounded(),
        };
        // As many SeaTable catalogs kept as bases kept open.
        let cached = cap.map_or_else(LruCache::unbounded, LruCache::new);
        Ok(Store {
            dir: dir.map(Path::to_path_buf),
            open: Mutex::new(open),
            catalogs: Mutex::new(vec![None; BUCKET_COUNT]),
            buckets: (0..BUCKET_COUNT).map(|_| Mutex::new(Unsynced::default())).collect(),
            files: (0..BUCKET_COUNT).map(|_| RwLock::new(())).collect(),
            feed: Hub::new(options.feed.clone()),
            meta_versions: (0..BUCKET_COUNT).map(|_| AtomicU64::new(0)).collect(),
            seatable: Mutex::new(cached),
            options,
        })
    }

    /// The options this store runs with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The change feed's hub.
    pub fn feed(&self) -> &Hub {
        &self.feed
    }

    /// Subscribes to the changes of base `id` after log index `after`
    /// (see [`Hub::subscribe`]); `NotFound` if the base does not exist.
    /// `None` subscribes from the base's applied index: to what comes next.
    pub fn subscribe(&self, id: &BaseId, after: Option<u64>) -> Result<Subscription> {
        let base = self.base(id)?;
        let applied = lock(&base).applied_index()?;
        // Nothing of this base happened at or before its creation, so asking
        // for changes after an earlier index loses nothing.
        let created = self.with_catalog(id.bucket(), |c| c.created_index(id))?.unwrap_or(0);
        let after = after.unwrap_or(applied).max(created);
        Ok(self.feed.subscribe(*id, after, applied))
    }

    /// How many bases are open now.
    pub fn open_bases(&self) -> usize {
        lock(&self.open).len()
    }

    fn bucket_dir(&self, bucket: BucketId) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join("buckets").join(bucket.to_string()))
    }

    fn base_path(&self, id: &BaseId) -> Option<PathBuf> {
        self.bucket_dir(id.bucket()).map(|d| d.join(format!("{id}.db")))
    }

    /// The catalog of a bucket, opened on first use.
    pub(crate) fn catalog(&self, bucket: BucketId) -> Result<Arc<Mutex<Catalog>>> {
        if let Some(c) = &lock(&self.catalogs)[bucket.0 as usize] {
            return Ok(c.clone());
        }
        // The files lock before the catalogs' (a restore takes them in
        // that order too).
        let _files = self.files[bucket.0 as usize].read().unwrap_or_else(|e| e.into_inner());
        let mut catalogs = lock(&self.catalogs);
        let slot = &mut catalogs[bucket.0 as usize];
        if let Some(c) = slot {
            return Ok(c.clone());
        }
        let path = match self.bucket_dir(bucket) {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                Some(d.join("catalog.db"))
            }
            None => None,
        };
        let c = Arc::new(Mutex::new(Catalog::open(path.as_deref())?));
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Runs `f` on a bucket's catalog.
    pub(crate) fn with_catalog<T>(
        &self,
        bucket: BucketId,
        f: impl FnOnce(&mut Catalog) -> Result<T>,
    ) -> Result<T> {
        let catalog = self.catalog(bucket)?;
        let mut catalog = lock(&catalog);
        f(&mut catalog)
    }

    /// An open base, opening it if it exists and is not open.
    fn base(&self, id: &BaseId) -> Result<Arc<Mutex<Base>>> {
        if let Some(b) = lock(&self.open).get(id) {
            return Ok(b.clone());
        }
        let Some(created) = self.with_catalog(id.bucket(), |c| c.created_index(id))? else {
            return Err(Error::NotFound(format!("no base {id}")));
        };
        // Opened outside the LRU lock: opening a file must not stall reads
        // of other bases. Two racing opens are harmless; one handle wins.
        let files = self.files[id.bucket().0 as usize].read().unwrap_or_else(|e| e.into_inner());
        let mut base = Base::open(self.base_path(id).as_deref())?;
        // A new file starts at its base's creation index, so that commands of
        // an earlier base with the same id (dropped before) are never
        // replayed into it.
        if base.applied_index()? < created {
            base.start_at(created)?;
        }
        let base = Arc::new(Mutex::new(base));
        let base = lock(&self.open).get_or_insert(*id, || base).clone();
        drop(files);
        Ok(base)
    }

    /// Applies a command at log `index`. Commands of one bucket must be
    /// applied one at a time, in index order.
    pub fn apply(&self, index: u64, command: &Command) -> Result<Output> {
        self.apply_after(index, command.clone(), None, None)
    }

    /// Applies a command at log `index` with the client's idempotency key:
    /// a key answered before gets [`Output::Repeated`] and changes nothing.
    pub fn apply_keyed(&self, index: u64, command: &Command, key: Option<&str>) -> Result<Output> {
        self.apply_after(index, command.clone(), key, None)
    }

    /// Applies a command at log `index` with the client's idempotency key,
    /// only once the write with the key `after` was applied to the same base
    /// (see [`Base::execute_after`]); `after` is for writes to a base only.
    /// Takes the command: the statements of a write are kept, as they are,
    /// until the base's next commit.
    pub fn apply_after(
        &self,
        index: u64,
        command: Command,
        key: Option<&str>,
        after: Option<&str>,
    ) -> Result<Output> {
        let writes_rows = matches!(command, Command::Execute { .. } | Command::System { .. });
        if after.is_some() && !writes_rows {
            return Err(Error::InvalidInput(
                "only a write to a base may name a write it follows".into(),
            ));
        }
        let bucket = command.base().bucket();
        let mut unsynced = lock(&self.buckets[bucket.0 as usize]);
        let output = self.apply_locked(&mut unsynced, index, command, key, after);
        if !writes_rows {
            self.meta_moved(bucket);
        }
        output
    }

    /// [`Store::apply_after`], under the bucket's lock.
    fn apply_locked(
        &self,
        unsynced: &mut Unsynced,
        index: u64,
        command: Command,
        key: Option<&str>,
        after: Option<&str>,
    ) -> Result<Output> {
        // Marked before applying: a failed apply may have written too.
        match &command {
            Command::CreateBase { .. } | Command::DropBase { .. } | Command::Restore { .. } => {
                unsynced.catalog = true
            }
            Command::Execute { base, .. } | Command::System { base, .. } => {
                unsynced.bases.insert(*base);
            }
        }
        match command {
            Command::CreateBase { ref id, ref name, ref created_at } => {
                let info = new_base(id, name, created_at)?;
                let catalog = self.catalog(id.bucket())?;
                let mut catalog = lock(&catalog);
                // A file left by a drop that crashed before deleting it is stale.
                if catalog.get(id)?.is_none() {
                    self.remove_files(id)?;
                }
                // The base's file is made on first use (see `base`), so a
                // create is one catalog transaction.
                Ok(match catalog.create(index, &info, key)? {
                    Applied::Replayed => Output::Replayed,
                    Applied::Done => {
                        self.feed.created(*id);
                        Output::Created { base: info }
                    }
                    Applied::Repeated { index } => {
                        let base = catalog.get(id)?.unwrap_or(info);
                        Output::Repeated { index, output: Box::new(Output::Created { base }) }
                    }
                })
            }
            Command::Restore { ref id, ref name, ref created_at, ref image } => {
                let info = new_base(id, name, created_at)?;
                let catalog = self.catalog(id.bucket())?;
                let mut catalog = lock(&catalog);
                if catalog.applied_index()? >= index {
                    return Ok(Output::Replayed);
                }
                // The file first, then the catalog: a crash in between
                // leaves a file the replay writes again (a file with no
                // catalog entry is stale, as after a drop).
                let written = if catalog.get(id)?.is_none() {
                    lock(&self.open).pop(id);
                    self.remove_files(id)?;
                    Some(Base::from_image(self.base_path(id).as_deref(), image, index)?)
                } else {
                    // It exists: the catalog refuses, or answers a repeat.
                    None
                };
                Ok(match catalog.create(index, &info, key)? {
                    Applied::Replayed => Output::Replayed,
                    Applied::Done => {
                        if let Some(base) = written {
                            lock(&self.open).put(*id, Arc::new(Mutex::new(base)));
                        }
                        self.feed.created(*id);
                        Output::Created { base: info }
                    }
                    Applied::Repeated { index } => {
                        let base = catalog.get(id)?.unwrap_or(info);
                        Output::Repeated { index, output: Box::new(Output::Created { base }) }
                    }
                })
            }
            Command::DropBase { ref id } => {
                let catalog = self.catalog(id.bucket())?;
                let applied = lock(&catalog).drop_base(index, id, key)?;
                match applied {
                    Applied::Replayed => Ok(Output::Replayed),
                    Applied::Repeated { index } => {
                        Ok(Output::Repeated { index, output: Box::new(Output::Dropped) })
                    }
                    Applied::Done => {
                        lock(&self.open).pop(id);
                        self.remove_files(id)?;
                        self.feed.dropped(*id, index);
                        Ok(Output::Dropped)
                    }
                }
            }
            Command::Execute { statements, .. } | Command::System { statements, .. }
                if statements.is_empty() =>
            {
                Err(Error::InvalidInput("no statements given".into()))
            }
            Command::Execute { base, statements, transaction } => {
                self.execute(index, base, |b, options| {
                    b.execute_after(index, statements, transaction, options, key, after)
                })
            }
            Command::System { base, statements } => self.execute(index, base, |b, options| {
                b.execute_system(index, statements, options, key, after)
            }),
        }
    }

    /// Runs `run`, a write at log `index`, on `base`, and publishes what it
    /// changed.
    fn execute(
        &self,
        index: u64,
        base: BaseId,
        run: impl FnOnce(&mut Base, &Options) -> Result<Executed>,
    ) -> Result<Output> {
        let b = self.base(&base)?;
        let mut b = lock(&b);
        let executed = run(&mut b, &self.options);
        if b.changed_meta() {
            self.meta_moved(base.bucket());
        }
        Ok(match executed? {
            Executed::Applied(results) => {
                // Published under the bucket lock: in log order.
                let (previous, events) = b.take_changes();
                self.feed.publish(base, index, previous, events);
                Output::Executed { results }
            }
            Executed::Replayed => Output::Replayed,
            Executed::Repeated { index, results } => {
                Output::Repeated { index, output: Box::new(Output::Executed { results }) }
            }
        })
    }

    /// Marks that what a base of `bucket` keeps beside its rows (schema,
    /// Shoal's own tables) may have changed.
    fn meta_moved(&self, bucket: BucketId) {
        self.meta_versions[bucket.0 as usize].fetch_add(1, Ordering::SeqCst);
    }

    /// The SeaTable catalog and API tokens of a base: the ones read last
    /// if nothing could have changed them since, else read now (taking the
    /// base's lock) and kept. See [`Store::cached_seatable`].
    pub fn seatable(&self, id: &BaseId) -> Result<Arc<seatable::Loaded>> {
        if let Some(loaded) = self.cached_seatable(id) {
            return Ok(loaded);
        }
        // Read before the base: a change applied in between moves it again.
        let version = self.meta_versions[id.bucket().0 as usize].load(Ordering::SeqCst);
        let loaded = Arc::new(self.read_system(id, seatable::load_all)?);
        lock(&self.seatable).put(*id, (version, loaded.clone()));
        Ok(loaded)
    }

    /// [`Store::seatable`] without reading the base: `None` if nothing was
    /// kept or it may have changed since. Never waits for an apply.
    pub fn cached_seatable(&self, id: &BaseId) -> Option<Arc<seatable::Loaded>> {
        let version = self.meta_versions[id.bucket().0 as usize].load(Ordering::SeqCst);
        lock(&self.seatable).get(id).filter(|(v, _)| *v == version).map(|(_, l)| l.clone())
    }

    /// Makes everything applied to `bucket` so far durable: fsyncs the
    /// write-ahead logs of its catalog and of every base written since the
    /// last sync. (Commits are not fsync'd one by one; see [`Base::open`].)
    /// A base closed since was checkpointed, and so synced, when it closed;
    /// a dropped one has no files left.
    pub fn sync_bucket(&self, bucket: BucketId) -> Result<()> {
        let mut unsynced = lock(&self.buckets[bucket.0 as usize]);
        self.commit_bases(&unsynced)?;
        let Some(dir) = self.bucket_dir(bucket) else {
            *unsynced = Unsynced::default();
            return Ok(());
        };
        if unsynced.catalog {
            sync_file(&dir.join("catalog.db-wal"))?;
        }
        for id in &unsynced.bases {
            sync_file(&dir.join(format!("{id}.db-wal")))?;
        }
        *unsynced = Unsynced::default();
        Ok(())
    }

    /// Commits what was applied to the open bases written since the last
    /// sync (a base that was closed since committed when it closed).
    fn commit_bases(&self, unsynced: &Unsynced) -> Result<()> {
        for id in &unsynced.bases {
            let base = lock(&self.open).peek(id).cloned();
            if let Some(base) = base {
                lock(&base).commit()?;
            }
        }
        Ok(())
    }

    /// Writes a consistent copy of a bucket (its catalog and every base
    /// file) into `dir`, with SQLite's online backup. Applies to the bucket
    /// wait meanwhile.
    pub fn snapshot_bucket(&self, bucket: BucketId, dir: &Path) -> Result<()> {
        let unsynced = lock(&self.buckets[bucket.0 as usize]);
        // The copies read the files.
        self.commit_bases(&unsynced)?;
        let ids = self.with_catalog(bucket, |c| {
            c.backup_to(&dir.join("catalog.db"))?;
            c.all_ids()
        })?;
        for id in ids {
            let dest = dir.join(format!("{id}.db"));
            match self.base_path(&id) {
                // On disk, a second connection reads the base (WAL readers do
                // not block), without churning the cache of open bases. A base
                // never used has no file; it is made on first use there too.
                Some(path) if path.exists() => {
                    let conn = rusqlite::Connection::open_with_flags(
                        &path,
                        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                    )
                    .map_err(crate::map_sqlite_error)?;
                    conn.backup("main", &dest, None).map_err(crate::map_sqlite_error)?;
                }
                Some(_) => {}
                None => {
                    let base = self.base(&id)?;
                    lock(&base).backup_to(&dest)?;
                }
            }
        }
        Ok(())
    }

    /// Replaces a bucket with the copy in `dir` made by [`Store::snapshot_bucket`].
    pub fn restore_bucket(&self, bucket: BucketId, dir: &Path) -> Result<()> {
        let _bucket = lock(&self.buckets[bucket.0 as usize]);
        let _files = self.files[bucket.0 as usize].write().unwrap_or_else(|e| e.into_inner());
        self.forget_bucket(bucket);
        self.feed.reset_bucket(bucket);
        let restored = self.restore_files(bucket, dir);
        self.meta_moved(bucket);
        restored
    }

    /// Puts the copy in `dir` in place of the bucket's files (the caller
    /// holds the bucket's locks).
    fn restore_files(&self, bucket: BucketId, dir: &Path) -> Result<()> {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "db"))
            .collect();
        match self.bucket_dir(bucket) {
            Some(bucket_dir) => {
                if bucket_dir.exists() {
                    std::fs::remove_dir_all(&bucket_dir)?;
                }
                std::fs::create_dir_all(&bucket_dir)?;
                for f in &files {
                    if let Some(name) = f.file_name() {
                        let dest = bucket_dir.join(name);
                        std::fs::copy(f, &dest)?;
                        sync_file(&dest)?;
                    }
                }
                // The new names must be as durable as the files.
                sync_file(&bucket_dir)?;
            }
            None => {
                let mut catalog = Catalog::open(None)?;
                let catalog_file = dir.join("catalog.db");
                if catalog_file.exists() {
                    catalog.restore_from(&catalog_file)?;
                }
                lock(&self.catalogs)[bucket.0 as usize] = Some(Arc::new(Mutex::new(catalog)));
                for f in files.iter().filter(|f| f.file_name().is_some_and(|n| n != "catalog.db")) {
                    let Some(id) = f
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .and_then(|s| s.parse::<BaseId>().ok())
                    else {
                        continue;
                    };
                    let mut base = Base::open(None)?;
                    base.restore_from(f)?;
                    lock(&self.open).put(id, Arc::new(Mutex::new(base)));
                }
            }
        }
        Ok(())
    }

    /// Closes a bucket's open bases and its catalog (their files stay).
    fn forget_bucket(&self, bucket: BucketId) {
        let mut open = lock(&self.open);
        let ids: Vec<BaseId> =
            open.iter().map(|(id, _)| *id).filter(|id| id.bucket() == bucket).collect();
        for id in ids {
            open.pop(&id);
        }
        drop(open);
        lock(&self.catalogs)[bucket.0 as usize] = None;
    }

    /// Forgets a bucket and deletes its data (its replica moved to other nodes).
    pub fn remove_bucket(&self, bucket: BucketId) -> Result<()> {
        let _bucket = lock(&self.buckets[bucket.0 as usize]);
        let _files = self.files[bucket.0 as usize].write().unwrap_or_else(|e| e.into_inner());
        self.forget_bucket(bucket);
        self.feed.reset_bucket(bucket);
        self.meta_moved(bucket);
        if let Some(d) = self.bucket_dir(bucket).filter(|d| d.exists()) {
            std::fs::remove_dir_all(d)?;
        }
        Ok(())
    }

    fn remove_files(&self, id: &BaseId) -> Result<()> {
        let Some(path) = self.base_path(id) else { return Ok(()) };
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One base's catalog entry.
    pub fn get_base(&self, id: &BaseId) -> Result<BaseInfo> {
        self.with_catalog(id.bucket(), |c| c.get(id))?
            .ok_or_else(|| Error::NotFound(format!("no base {id}")))
    }

    /// Up to `limit` bases with ids after `after`, in id order, and whether
    /// more follow.
    pub fn list_bases(
        &self,
        after: Option<&BaseId>,
        limit: usize,
    ) -> Result<(Vec<BaseInfo>, bool)> {
        self.find_bases(after, limit, &BaseFilter::default())
    }

    /// [`Store::list_bases`], of the bases `filter` lets through.
    pub fn find_bases(
        &self,
        after: Option<&BaseId>,
        limit: usize,
        filter: &BaseFilter,
    ) -> Result<(Vec<BaseInfo>, bool)> {
        let mut out = Vec::new();
        let mut first = after.map(|a| a.bucket().0).unwrap_or(0);
        let mut last = u8::MAX;
        if let Some(b) = filter.bucket {
            if b.0 < first {
                return Ok((out, false));
            }
            (first, last) = (b.0, b.0);
        }
        let text = filter.text.trim().to_lowercase();
        // Ids sort by bucket first, so walking buckets in order walks ids in order.
        for b in first..=last {
            let bucket = BucketId(b);
            // Skip buckets never written to without creating their catalog.
            if let Some(d) = self.bucket_dir(bucket) {
                if !d.join("catalog.db").exists() {
                    continue;
                }
            } else if lock(&self.catalogs)[b as usize].is_none() {
                continue;
            }
            let want = limit + 1 - out.len();
            out.extend(self.with_catalog(bucket, |c| c.list(after, want, &text))?);
            if out.len() > limit {
                out.truncate(limit);
                return Ok((out, true));
            }
        }
        Ok((out, false))
    }

    /// The id of the Raft group a bucket's data belongs to, if recorded. It
    /// is kept in the bucket's catalog, so a replica that is sent a snapshot
    /// receives its group's id with the data.
    pub fn group_id(&self, bucket: BucketId) -> Result<Option<String>> {
        self.with_catalog(bucket, |c| c.group_id())
    }

    /// Records the id of the Raft group a bucket's data belongs to.
    pub fn set_group_id(&self, bucket: BucketId, id: &str) -> Result<()> {
        self.with_catalog(bucket, |c| c.set_group_id(id))
    }

    /// Runs a read-only statement on a base.
    pub fn query(&self, id: &BaseId, sql: &str, params: &Params) -> Result<QueryResponse> {
        let b = self.base(id)?;
        let mut b = lock(&b);
        b.query(sql, params, &self.options)
    }

    /// Runs a read-only statement on a base right away, on the calling
    /// thread, if that costs no wait: the base is open, no apply or other
    /// read holds it, no applied command waits in its open transaction, and
    /// the statement finishes within `within`. `None`
    /// when it could not (nothing was changed): run [`Store::query`] where
    /// blocking is fine. For callers that must not block long (an async
    /// worker), saving the hand-over to another thread for the many short
    /// reads.
    pub fn try_query_now(
        &self,
        id: &BaseId,
        sql: &str,
        params: &Params,
        within: Duration,
    ) -> Option<Result<QueryResponse>> {
        let b = lock(&self.open).get(id)?.clone();
        let mut b = match b.try_lock() {
            Ok(b) => b,
            Err(std::sync::TryLockError::WouldBlock) => return None,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        };
        // Applied commands waiting in the connection's open transaction
        // are left alone: a statement stopped early would make SQLite take
        // its recovery path with them, which this shortcut is not worth.
        if b.has_uncommitted() {
            return None;
        }
        let cut = within < self.options.statement_timeout;
        let deadline = std::time::Instant::now() + within.min(self.options.statement_timeout);
        match b.query_until(sql, params, &self.options, deadline) {
            Err(Error::LimitExceeded(_)) if cut && std::time::Instant::now() >= deadline => None,
            done => Some(done),
        }
    }

    /// A consistent copy of a base's database file at `dest` (SQLite's
    /// online backup).
    pub fn backup_to(&self, id: &BaseId, dest: &std::path::Path) -> Result<()> {
        let b = self.base(id)?;
        let mut b = lock(&b);
        b.backup_to(dest)
    }

    /// A checksum of a base's content (see [`Base::checksum`]).
    pub fn checksum(&self, id: &BaseId) -> Result<String> {
        let b = self.base(id)?;
        let mut b = lock(&b);
        b.checksum()
    }

    /// Runs `f` on a base's connection, as Shoal (no sandbox): for reads
    /// of Shoal's own tables. `f` must not write.
    pub fn read_system<T>(
        &self,
        id: &BaseId,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T>,
    ) -> Result<T> {
        let b = self.base(id)?;
        let mut b = lock(&b);
        b.read_system(f)
    }

    /// The user tables of a base.
    pub fn tables(&self, id: &BaseId) -> Result<Vec<TableInfo>> {
        let b = self.base(id)?;
        let mut b = lock(&b);
        b.tables()
    }

    /// One table of a base, or `NotFound`.
    pub fn table(&self, id: &BaseId, name: &str) -> Result<TableInfo> {
        let b = self.base(id)?;
        let mut b = lock(&b);
        b.table(name)
    }
}

/// What a create or a restore records of a new base.
fn new_base(id: &BaseId, name: &Option<String>, created_at: &str) -> Result<BaseInfo> {
    if name.as_ref().is_some_and(|n| n.len() > 1024) {
        return Err(Error::InvalidInput("a base name may be at most 1024 bytes".into()));
    }
    Ok(BaseInfo { id: *id, name: name.clone(), bucket: id.bucket(), created_at: created_at.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::api::{ChangeOp, Statement};

    use crate::feed::Change;

    fn create(id: BaseId) -> Command {
        Command::CreateBase {
            id,
            name: Some("n".into()),
            created_at: "2024-01-01T00:00:00Z".into(),
        }
    }

    fn insert(id: BaseId, v: i64) -> Command {
        Command::Execute {
            base: id,
            statements: vec![Statement {
                sql: "INSERT INTO t (v) VALUES (?)".into(),
                params: Params::Positional(vec![v.into()]),
            }],
            transaction: true,
        }
    }

    fn table(id: BaseId) -> Command {
        Command::Execute {
            base: id,
            statements: vec![Statement {
                sql: "CREATE TABLE t (v INTEGER)".into(),
                params: Params::default(),
            }],
            transaction: true,
        }
    }

    /// A SQLite file with a table of three rows and a stale API token.
    fn image() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1), (2), (3);
             CREATE TABLE _shoal_api_tokens (hash TEXT PRIMARY KEY, name TEXT);
             INSERT INTO _shoal_api_tokens VALUES ('h', 'old');",
        )
        .unwrap();
        drop(conn);
        crate::image::check(&std::fs::read(&path).unwrap()).unwrap()
    }

    #[test]
    fn a_restored_base_holds_the_file_and_begins_at_its_index() {
        for on_disk in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(on_disk.then_some(dir.path()), Options::default()).unwrap();
            let id = BaseId::random();
            let restore = Command::Restore {
                id,
                name: Some("restored".into()),
                created_at: "2026-01-01T00:00:00Z".into(),
                image: image(),
            };
            assert!(matches!(store.apply(5, &restore).unwrap(), Output::Created { .. }));
            let count = |store: &Store| {
                store.query(&id, "SELECT count(*) FROM t", &Params::default()).unwrap().rows
            };
            assert_eq!(count(&store), vec![vec![serde_json::json!(3)]]);
            // Applied again (a replay after a restart): nothing happens.
            assert!(matches!(store.apply(5, &restore).unwrap(), Output::Replayed));
            // Over an existing base: refused.
            assert!(matches!(store.apply(6, &restore), Err(Error::Conflict(_))));
            // It goes on from its index, with no token of the file's past.
            store.apply(7, &insert(id, 4)).unwrap();
            assert_eq!(count(&store), vec![vec![serde_json::json!(4)]]);
            let tokens = store
                .read_system(&id, |c| {
                    c.query_row("SELECT count(*) FROM _shoal_api_tokens", [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map_err(crate::map_sqlite_error)
                })
                .unwrap();
            assert_eq!(tokens, 0);
            if on_disk {
                store.sync_bucket(id.bucket()).unwrap();
                drop(store);
                let again = Store::open(Some(dir.path()), Options::default()).unwrap();
                assert_eq!(count(&again), vec![vec![serde_json::json!(4)]]);
            }
        }
    }

    #[test]
    fn lru_bounds_open_bases_and_data_survives_eviction() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(Some(dir.path()), Options { max_open_bases: 3, ..Options::default() })
                .unwrap();
        let ids: Vec<BaseId> = (0..10).map(|_| BaseId::random()).collect();
        let mut index = 0;
        for id in &ids {
            for c in [create(*id), table(*id), insert(*id, 7)] {
                index += 1;
                store.apply(index, &c).unwrap();
            }
        }
        assert!(store.open_bases() <= 3);
        for id in &ids {
            let r = store.query(id, "SELECT v FROM t", &Params::default()).unwrap();
            assert_eq!(r.rows, vec![vec![serde_json::json!(7)]]);
        }
        assert!(store.open_bases() <= 3);
    }

    #[test]
    fn sync_covers_what_was_written_and_tolerates_files_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path()), Options::default()).unwrap();
        let (a, b) = (BaseId::random(), BaseId::random());
        store.apply(1, &create(a)).unwrap();
        store.apply(2, &table(a)).unwrap();
        store.apply(3, &insert(a, 1)).unwrap();
        {
            let unsynced = lock(&store.buckets[a.bucket().0 as usize]);
            assert!(unsynced.catalog);
            assert!(unsynced.bases.contains(&a));
        }
        store.sync_bucket(a.bucket()).unwrap();
        {
            let unsynced = lock(&store.buckets[a.bucket().0 as usize]);
            assert!(!unsynced.catalog && unsynced.bases.is_empty());
        }
        // Written, then dropped before the sync: its files are gone.
        store.apply(4, &create(b)).unwrap();
        store.apply(5, &table(b)).unwrap();
        store.apply(6, &Command::DropBase { id: b }).unwrap();
        store.sync_bucket(b.bucket()).unwrap();
        // Written, then the whole bucket removed.
        store.apply(7, &insert(a, 2)).unwrap();
        store.remove_bucket(a.bucket()).unwrap();
        store.sync_bucket(a.bucket()).unwrap();
    }

    #[test]
    fn create_drop_and_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(dir.path()), Options::default()).unwrap();
        let mut ids: Vec<BaseId> = (0..25).map(|_| BaseId::random()).collect();
        for (i, id) in ids.iter().enumerate() {
            store.apply(i as u64 + 1, &create(*id)).unwrap();
        }
        assert!(matches!(store.apply(100, &create(ids[0])), Err(Error::Conflict(_))));
        let first = ids[0];
        ids.sort();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = store.list_bases(after.as_ref(), 7).unwrap();
            seen.extend(page.iter().map(|b| b.id));
            after = page.last().map(|b| b.id);
            if !more {
                break;
            }
        }
        assert_eq!(seen, ids);
        let victim = ids[3];
        let path = dir
            .path()
            .join("buckets")
            .join(victim.bucket().to_string())
            .join(format!("{victim}.db"));
        // Files are made on first use.
        assert!(!path.exists());
        store.tables(&victim).unwrap();
        assert!(path.exists());
        store.apply(200, &Command::DropBase { id: victim }).unwrap();
        assert!(!path.exists());
        assert!(matches!(store.get_base(&victim), Err(Error::NotFound(_))));
        assert!(matches!(
            store.query(&victim, "SELECT 1", &Params::default()),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            store.apply(201, &Command::DropBase { id: victim }),
            Err(Error::NotFound(_))
        ));
        // Replaying an applied create (its bucket's catalog is past index 1) changes nothing.
        assert_eq!(store.apply(1, &create(first)).unwrap(), Output::Replayed);
        // A re-created base ignores commands of its earlier incarnation.
        store.apply(300, &create(victim)).unwrap();
        let old = Command::Execute {
            base: victim,
            statements: vec![Statement {
                sql: "CREATE TABLE old (a)".into(),
                params: Params::default(),
            }],
            transaction: true,
        };
        assert_eq!(store.apply(250, &old).unwrap(), Output::Replayed);
        assert!(store.tables(&victim).unwrap().is_empty());
    }

    #[test]
    fn reads_during_a_bucket_restore_see_the_old_or_the_new_bucket_never_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(Some(&dir.path().join("a")), Options::default()).unwrap());
        let id: BaseId = "6e000001-0000-4000-8000-000000000000".parse().unwrap();
        for (i, c) in [create(id), table(id), insert(id, 1)].iter().enumerate() {
            store.apply(i as u64 + 1, c).unwrap();
        }
        let snap = dir.path().join("snap");
        std::fs::create_dir_all(&snap).unwrap();
        store.snapshot_bucket(id.bucket(), &snap).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Err(e) = store.query(&id, "SELECT count(*) FROM t", &Params::default()) {
                        errors.push(e.to_string());
                    }
                }
                errors
            })
        };
        for _ in 0..100 {
            store.restore_bucket(id.bucket(), &snap).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let errors = reader.join().unwrap();
        assert!(errors.is_empty(), "{} reads failed, e.g. {:?}", errors.len(), errors.first());
        assert_eq!(store.checksum(&id).unwrap(), {
            let again = Store::open(Some(&dir.path().join("a")), Options::default()).unwrap();
            again.checksum(&id).unwrap()
        });
    }

    #[test]
    fn bucket_snapshots_restore_on_disk_and_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Some(&dir.path().join("a")), Options::default()).unwrap();
        // Three bases in one bucket: one written, one only created, one dropped.
        let id = |n: u8| -> BaseId {
            format!("7f0000{n:02x}-0000-4000-8000-000000000000").parse().unwrap()
        };
        let (written, empty, dropped) = (id(1), id(2), id(3));
        let mut index = 0;
        for c in [
            create(written),
            table(written),
            insert(written, 42),
            create(empty),
            create(dropped),
            table(dropped),
        ] {
            index += 1;
            store.apply(index, &c).unwrap();
        }
        store.apply(index + 1, &Command::DropBase { id: dropped }).unwrap();
        let sum = store.checksum(&written).unwrap();
        let snap = dir.path().join("snap");
        std::fs::create_dir_all(&snap).unwrap();
        store.snapshot_bucket(written.bucket(), &snap).unwrap();

        for target in [Some(dir.path().join("b")), None] {
            let other = Store::open(target.as_deref(), Options::default()).unwrap();
            // Something to be replaced.
            other.apply(1, &create(id(9))).unwrap();
            other.restore_bucket(written.bucket(), &snap).unwrap();
            assert_eq!(other.checksum(&written).unwrap(), sum);
            assert_eq!(other.tables(&empty).unwrap(), vec![]);
            assert!(matches!(other.get_base(&dropped), Err(Error::NotFound(_))));
            assert!(matches!(other.get_base(&id(9)), Err(Error::NotFound(_))));
            // It carries on from there: replays are skipped, new commands apply.
            assert_eq!(other.apply(3, &insert(written, 42)).unwrap(), Output::Replayed);
            other.apply(index + 2, &insert(written, 43)).unwrap();
            assert_ne!(other.checksum(&written).unwrap(), sum);
            other.remove_bucket(written.bucket()).unwrap();
            assert!(matches!(other.get_base(&written), Err(Error::NotFound(_))));
        }
    }

    /// Ids `a001`, `a002`, ... (tests only need them distinct).
    struct Counting(usize);

    impl seatable::Ids for Counting {
        fn short(&mut self, _: &std::collections::HashSet<String>) -> String {
            self.0 += 1;
            format!("a{:03}", self.0)
        }
    }

    #[test]
    fn the_seatable_catalog_is_read_again_only_after_what_may_change_it() {
        let store = Store::open(None, Options::default()).unwrap();
        let id = BaseId::random();
        let system = |statements| Command::System { base: id, statements };
        let sql = |sql: &str| Command::Execute {
            base: id,
            statements: vec![Statement { sql: sql.into(), params: Params::default() }],
            transaction: true,
        };
        let mut index = 0;
        let mut apply = |c: &Command| {
            index += 1;
            store.apply(index, c).unwrap()
        };
        apply(&create(id));
        assert!(store.cached_seatable(&id).is_none());
        assert!(store.seatable(&id).unwrap().meta.tables.is_empty());
        let record = seatable::TokenRecord {
            name: "t".into(),
            permission: "rw".into(),
            created_at: "2024-01-01T00:00:00Z".into(),
        };
        apply(&system(seatable::add_token("hash", &record)));
        assert!(store.cached_seatable(&id).is_none(), "a new token");
        assert!(store.seatable(&id).unwrap().has_token("hash"));
        let column = seatable::NewColumn {
            name: "v".into(),
            kind: seatable::Kind::Text,
            data: Default::default(),
            options: vec![],
        };
        let meta = store.seatable(&id).unwrap().meta.clone();
        let (_, made) = seatable::create_table(&meta, "st", &[column], &mut Counting(0)).unwrap();
        apply(&system(made));
        apply(&table(id));
        assert!(store.cached_seatable(&id).is_none(), "a new table");
        let loaded = store.seatable(&id).unwrap();
        let t = loaded.meta.table("st").unwrap();
        let stamp =
            seatable::Stamp { time: "2024-01-01T00:00:00.000+00:00".into(), user: "u".into() };
        let row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({"v": "x"})).unwrap();
        let (rows, _) =
            seatable::append_rows(t, std::slice::from_ref(&row), &stamp, &mut Counting(9)).unwrap();
        // Appended rows and plain SQL on a user table change none of it:
        // the same catalog is served.
        apply(&system(rows));
        apply(&insert(id, 1));
        assert!(store.cached_seatable(&id).is_some_and(|c| Arc::ptr_eq(&c, &loaded)));
        // A new select option is in the catalog.
        let select = seatable::NewColumn {
            name: "s".into(),
            kind: seatable::Kind::SingleSelect,
            data: Default::default(),
            options: vec![],
        };
        let (_, added) = seatable::add_column(t, &select, &mut Counting(20)).unwrap();
        apply(&system(added));
        let loaded = store.seatable(&id).unwrap();
        let t = loaded.meta.table("st").unwrap();
        let row: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({"s": "new option"})).unwrap();
        let (rows, _) =
            seatable::append_rows(t, std::slice::from_ref(&row), &stamp, &mut Counting(30))
                .unwrap();
        apply(&system(rows));
        assert!(store.cached_seatable(&id).is_none(), "a new option");
        let loaded = store.seatable(&id).unwrap();
        assert_eq!(loaded.meta.table("st").unwrap().columns[1].options.len(), 1);
        // Any schema change, through any API.
        let _ = store.seatable(&id).unwrap();
        apply(&sql("ALTER TABLE st DROP COLUMN v"));
        assert!(store.cached_seatable(&id).is_none(), "a dropped column");
        assert_eq!(store.seatable(&id).unwrap().meta.table("st").unwrap().columns.len(), 1);
        apply(&system(seatable::revoke_token("t")));
        assert!(store.cached_seatable(&id).is_none(), "a revoked token");
        assert!(!store.seatable(&id).unwrap().has_token("hash"));
        // A bucket replaced from a snapshot.
        let _ = store.seatable(&id).unwrap();
        let dir = tempfile::tempdir().unwrap();
        store.snapshot_bucket(id.bucket(), dir.path()).unwrap();
        store.restore_bucket(id.bucket(), dir.path()).unwrap();
        assert!(store.cached_seatable(&id).is_none(), "a restored bucket");
    }

    #[test]
    fn checksums_follow_content() {
        let store = Store::open(None, Options::default()).unwrap();
        let (a, b) = (BaseId::random(), BaseId::random());
        for (i, c) in [create(a), table(a), insert(a, 1), create(b), table(b), insert(b, 1)]
            .into_iter()
            .enumerate()
        {
            store.apply(i as u64 + 1, &c).unwrap();
        }
        assert_eq!(store.checksum(&a).unwrap(), store.checksum(&b).unwrap());
        store.apply(10, &insert(b, 2)).unwrap();
        assert_ne!(store.checksum(&a).unwrap(), store.checksum(&b).unwrap());
    }

    fn exec(id: BaseId, sqls: &[&str], transaction: bool) -> Command {
        Command::Execute {
            base: id,
            statements: sqls
                .iter()
                .map(|s| Statement { sql: s.to_string(), params: Params::default() })
                .collect(),
            transaction,
        }
    }

    /// Everything a subscription has now, backlog then live.
    fn drain(s: &mut Subscription) -> Vec<Change> {
        let mut out: Vec<Change> = s.backlog.drain(..).flat_map(|b| b.to_vec()).collect();
        while let Ok(b) = s.live.try_recv() {
            out.extend(b.iter().cloned());
        }
        out
    }

    fn summary(events: &[Change]) -> Vec<(u64, ChangeOp, Option<i64>, serde_json::Value)> {
        events
            .iter()
            .map(|e| {
                let values = match (&e.row, &e.sql) {
                    (Some(r), _) => serde_json::Value::Object(r.to_row().unwrap()),
                    (None, Some(sql)) => sql.clone().into(),
                    (None, None) => serde_json::Value::Null,
                };
                (e.index, e.op, e.rowid, values)
            })
            .collect()
    }

    #[test]
    fn the_feed_captures_rows_ddl_and_only_committed_changes() {
        use serde_json::json;
        let store = Store::open(None, Options::default()).unwrap();
        let id = BaseId::random();
        store.apply(1, &create(id)).unwrap();
        let mut s = store.subscribe(&id, Some(0)).unwrap();
        assert_eq!(s.resync, None);
        let ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB)";
        store.apply(2, &exec(id, &[ddl], true)).unwrap();
        store
            .apply(
                3,
                &exec(id, &["INSERT INTO t (name, data) VALUES ('a', x'01'), ('b', NULL)"], true),
            )
            .unwrap();
        store.apply(4, &exec(id, &["UPDATE t SET name = 'c' WHERE id = 2"], true)).unwrap();
        store.apply(5, &exec(id, &["DELETE FROM t WHERE id = 1"], true)).unwrap();
        let events = drain(&mut s);
        assert_eq!(
            summary(&events),
            vec![
                (2, ChangeOp::Ddl, None, json!(ddl)),
                (
                    3,
                    ChangeOp::Insert,
                    Some(1),
                    json!({"id": 1, "name": "a", "data": {"base64": "AQ=="}})
                ),
                (3, ChangeOp::Insert, Some(2), json!({"id": 2, "name": "b", "data": null})),
                (4, ChangeOp::Update, Some(2), json!({"id": 2, "name": "c", "data": null})),
                (5, ChangeOp::Delete, Some(1), serde_json::Value::Null),
            ]
        );
        assert_eq!(events[0].table.as_deref(), Some("t"));
        assert!(events[1..].iter().all(|e| e.table.as_deref() == Some("t")));

        // A failing transaction publishes nothing.
        let failing =
            exec(id, &["INSERT INTO t (name) VALUES ('x')", "INSERT INTO nope VALUES (1)"], true);
        assert!(store.apply(6, &failing).is_err());
        // Without a transaction, only the statements that succeeded.
        let mixed = exec(
            id,
            &[
                "INSERT INTO t (id, name) VALUES (10, 'p')",
                "INSERT INTO t (id, name) VALUES (10, 'dup')",
                "INSERT INTO t (id, name) VALUES (11, 'q'), (10, 'dup2')",
                "UPDATE t SET name = 'r' WHERE id = 10",
            ],
            false,
        );
        store.apply(7, &mixed).unwrap();
        assert_eq!(
            summary(&drain(&mut s)),
            vec![
                (7, ChangeOp::Insert, Some(10), json!({"id": 10, "name": "p", "data": null})),
                (7, ChangeOp::Update, Some(10), json!({"id": 10, "name": "r", "data": null})),
            ]
        );
        // A replay and an idempotent repeat publish nothing; keyed writes
        // touch `_shoal_idempotency`, which never shows.
        assert_eq!(store.apply(7, &mixed).unwrap(), Output::Replayed);
        let one = exec(id, &["INSERT INTO t (id) VALUES (20)"], true);
        store.apply_keyed(8, &one, Some("k1")).unwrap();
        assert!(matches!(store.apply_keyed(9, &one, Some("k1")).unwrap(), Output::Repeated { .. }));
        assert_eq!(
            summary(&drain(&mut s)),
            vec![(8, ChangeOp::Insert, Some(20), json!({"id": 20, "name": null, "data": null}))]
        );
        // DDL without a table of its own, and a WITHOUT ROWID table, whose
        // rows SQLite's update hook does not report.
        store
            .apply(
                10,
                &exec(
                    id,
                    &[
                        "CREATE VIEW v AS SELECT 1",
                        "CREATE TABLE w (k TEXT PRIMARY KEY) WITHOUT ROWID",
                        "INSERT INTO w VALUES ('a')",
                    ],
                    true,
                ),
            )
            .unwrap();
        let events = drain(&mut s);
        assert_eq!(
            events.iter().map(|e| (e.op, e.table.as_deref())).collect::<Vec<_>>(),
            vec![(ChangeOp::Ddl, None), (ChangeOp::Ddl, Some("w"))]
        );
        // A write that changes nothing publishes nothing.
        store.apply(11, &exec(id, &["DELETE FROM t WHERE id = 999"], true)).unwrap();
        assert!(drain(&mut s).is_empty());
        // Dropping the base ends the feed.
        store.apply(12, &Command::DropBase { id }).unwrap();
        assert_eq!(
            summary(&drain(&mut s)),
            vec![(12, ChangeOp::BaseDropped, None, serde_json::Value::Null)]
        );
        assert!(matches!(
            s.live.try_recv(),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(matches!(store.subscribe(&id, None), Err(Error::NotFound(_))));
    }

    #[test]
    fn triggers_and_cascades_are_captured() {
        use serde_json::json;
        let store = Store::open(None, Options::default()).unwrap();
        let id = BaseId::random();
        store.apply(1, &create(id)).unwrap();
        store
            .apply(
                2,
                &exec(
                    id,
                    &[
                        "CREATE TABLE p (id INTEGER PRIMARY KEY)",
                        "CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER REFERENCES p(id) ON DELETE CASCADE)",
                        "CREATE TABLE log (msg TEXT)",
                        "CREATE TRIGGER tr AFTER INSERT ON p BEGIN INSERT INTO log VALUES ('p' || new.id); END",
                    ],
                    true,
                ),
            )
            .unwrap();
        let mut s = store.subscribe(&id, None).unwrap();
        store
            .apply(3, &exec(id, &["INSERT INTO p VALUES (1)", "INSERT INTO c VALUES (5, 1)"], true))
            .unwrap();
        store.apply(4, &exec(id, &["DELETE FROM p"], true)).unwrap();
        let got: Vec<_> = drain(&mut s)
            .into_iter()
            .map(|e| {
                (
                    e.index,
                    e.op,
                    e.table.unwrap_or_default(),
                    e.row.map(|r| serde_json::Value::Object(r.to_row().unwrap())),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (3, ChangeOp::Insert, "p".to_string(), Some(json!({"id": 1}))),
                (3, ChangeOp::Insert, "log".to_string(), Some(json!({"msg": "p1"}))),
                (3, ChangeOp::Insert, "c".to_string(), Some(json!({"id": 5, "p": 1}))),
                (4, ChangeOp::Delete, "p".to_string(), None),
                (4, ChangeOp::Delete, "c".to_string(), None),
            ]
        );
    }

    #[test]
    fn memory_store_keeps_everything() {
        let store = Store::open(None, Options { max_open_bases: 1, ..Options::default() }).unwrap();
        let ids: Vec<BaseId> = (0..5).map(|_| BaseId::random()).collect();
        let mut index = 0;
        for id in &ids {
            for c in [create(*id), table(*id), insert(*id, 1)] {
                index += 1;
                store.apply(index, &c).unwrap();
            }
        }
        for id in &ids {
            assert_eq!(
                store.query(id, "SELECT count(*) FROM t", &Params::default()).unwrap().rows[0][0],
                1
            );
        }
        assert_eq!(store.list_bases(None, 100).unwrap().0.len(), 5);
    }
}
