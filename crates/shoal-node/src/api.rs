//! The `/v1/bases` handlers.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde::Deserialize;
use shoal_storage::{BaseFilter, Command, Output, rows};
use shoal_types::api::{
    BaseInfo, BaseList, BaseLocation, Consistency, CreateBaseRequest, ExecuteRequest,
    ExecuteResponse, InsertRowsRequest, InsertRowsResponse, QueryRequest, QueryResponse, Row,
    RowList, TableList, UpdateRowRequest, WriteResponse,
};
use shoal_types::{BaseId, BucketId, Error, ErrorBody};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{ApiBody, ApiJson, ApiPath, ApiQuery, IdempotencyKey};

/// The largest page of bases one list call returns.
const MAX_LIST_LIMIT: usize = 1000;

fn base_id(s: &str) -> Result<BaseId, Error> {
    s.parse()
}

/// The engine; base routes are only mounted where there is one.
pub(crate) fn engine(state: &AppState) -> Result<&std::sync::Arc<crate::Engine>, Error> {
    state.engine.as_ref().ok_or_else(|| Error::Unavailable("this process serves no bases".into()))
}

fn unexpected(output: Output) -> Error {
    Error::Internal(format!("unexpected command output {output:?}"))
}

pub use shoal_http::bases::{KEYED_IDS, is_sqlite};

/// The query string of `POST /v1/bases`: with a SQLite file as the body,
/// the new base's id and name (with JSON, they are in the body).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    id: Option<String>,
    name: Option<String>,
}

/// The id of a new base: the one given, or, for a retried create without
/// one, the id derived from its idempotency key (so that every attempt
/// names the same base, in the same bucket), or a random one.
fn new_base_id(given: Option<BaseId>, key: Option<&str>) -> BaseId {
    given.unwrap_or_else(|| match key {
        Some(k) => BaseId(uuid::Uuid::new_v5(&KEYED_IDS, k.as_bytes())),
        None => BaseId::random(),
    })
}

/// `POST /v1/bases`: an empty base from a JSON body, or a base holding the
/// SQLite database file sent as the body (`Content-Type:
/// application/vnd.sqlite3`; a backup made by `GET .../backup`, or any
/// SQLite database).
pub async fn create_base(
    State(state): State<Arc<AppState>>,
    IdempotencyKey(key): IdempotencyKey,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<CreateParams>,
    ApiBody(body): ApiBody,
) -> ApiResult<(StatusCode, Json<BaseInfo>)> {
    let created_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let command = if is_sqlite(&headers) {
        let given = params.id.as_deref().map(base_id).transpose()?;
        let id = new_base_id(given, key.as_deref());
        // Checking reads the whole file: off the async workers.
        let image = tokio::task::spawn_blocking(move || shoal_storage::image::check(&body))
            .await
            .map_err(|e| Error::Internal(format!("the file check failed: {e}")))??;
        Command::Restore { id, name: params.name, created_at, image }
    } else {
        if params.id.is_some() || params.name.is_some() {
            return Err(Error::InvalidInput(
                "id and name go in the JSON body (the query string takes them only with a \
                 SQLite file as the body)"
                    .into(),
            )
            .into());
        }
        let req: CreateBaseRequest = serde_json::from_slice(&body)
            .map_err(|e| Error::InvalidInput(format!("invalid JSON body: {e}")))?;
        let id = new_base_id(req.id, key.as_deref());
        Command::CreateBase { id, name: req.name, created_at }
    };
    match engine(&state)?.write(command, key.as_deref()).await? {
        (_, Output::Created { base: info }) => Ok((StatusCode::CREATED, Json(info))),
        (_, other) => Err(unexpected(other).into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<usize>,
    after: Option<String>,
    /// Only bases whose id starts with this, or whose name contains it.
    q: Option<String>,
    /// Only the bases of this bucket (`00`..`ff`).
    bucket: Option<String>,
}

pub async fn list_bases(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uri: Uri,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<BaseList>> {
    let limit = p.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIST_LIMIT {
        return Err(
            Error::InvalidInput(format!("limit must be between 1 and {MAX_LIST_LIMIT}")).into()
        );
    }
    let after = p.after.as_deref().map(base_id).transpose()?;
    let bucket = p.bucket.as_deref().map(str::parse::<BucketId>).transpose()?;
    let filter = BaseFilter { bucket, text: p.q.unwrap_or_default() };
    let engine = engine(&state)?;
    // A node that does not hold every bucket asks the others (who answer
    // from their own replicas).
    let dir = engine.directory();
    let holds_all = dir
        .map
        .as_ref()
        .is_none_or(|m| BucketId::all().all(|b| m.replicas(b).contains(engine.node_id())));
    if bucket.is_none() && !holds_all && !headers.contains_key(crate::forward::FORWARDED) {
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let auth = headers.get(axum::http::header::AUTHORIZATION);
        return match crate::lists::gather(&state.forwarder, &dir, &query, auth, limit).await {
            Ok(list) => Ok(Json(list)),
            Err(crate::lists::ListFailure::Unavailable(e)) => Err(e.into()),
            Err(crate::lists::ListFailure::Refused(answer)) => {
                let body: ErrorBody = answer.json().await.map_err(|e| {
                    Error::Unavailable(format!("a node refused the list unreadably: {e}"))
                })?;
                Err(Error::InvalidInput(body.error.message).into())
            }
        };
    }
    // One bucket's list comes from its leader (forwarded there, like any
    // read); the whole list from this node's replicas.
    let (bases, more) = match bucket {
        Some(b) => {
            engine
                .read(b, Consistency::default(), move |s| {
                    s.find_bases(after.as_ref(), limit, &filter)
                })
                .await?
        }
        None => engine.local(move |s| s.find_bases(after.as_ref(), limit, &filter)).await?,
    };
    let next_after = if more { bases.last().map(|b| b.id) } else { None };
    Ok(Json(BaseList { bases, next_after }))
}

pub async fn get_base(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BaseInfo>> {
    let id = base_id(&id)?;
    Ok(Json(
        engine(&state)?.read(id.bucket(), Consistency::default(), move |s| s.get_base(&id)).await?,
    ))
}

pub async fn drop_base(
    State(state): State<Arc<AppState>>,
    IdempotencyKey(key): IdempotencyKey,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WriteResponse>> {
    let id = base_id(&id)?;
    let (index, _) = engine(&state)?.write(Command::DropBase { id }, key.as_deref()).await?;
    Ok(Json(WriteResponse { index }))
}

pub async fn execute(
    State(state): State<Arc<AppState>>,
    IdempotencyKey(key): IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ExecuteRequest>,
) -> ApiResult<Json<ExecuteResponse>> {
    let base = base_id(&id)?;
    if req.statements.is_empty() {
        return Err(Error::InvalidInput("\"statements\" is empty".into()).into());
    }
    match engine(&state)?
        .write(
            Command::Execute { base, statements: req.statements, transaction: req.transaction },
            key.as_deref(),
        )
        .await?
    {
        (index, Output::Executed { results }) => Ok(Json(ExecuteResponse { results, index })),
        (_, other) => Err(unexpected(other).into()),
    }
}

pub async fn query(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<QueryRequest>,
) -> ApiResult<Json<QueryResponse>> {
    let base = base_id(&id)?;
    // One node serves every consistency level: it is the only replica.
    Ok(Json(engine(&state)?.query(base, req.consistency, req.sql, req.params).await?))
}

pub async fn tables(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TableList>> {
    let base = base_id(&id)?;
    Ok(Json(TableList {
        tables: engine(&state)?
            .read(base.bucket(), Consistency::default(), move |s| s.tables(&base))
            .await?,
    }))
}

pub async fn insert_rows(
    State(state): State<Arc<AppState>>,
    IdempotencyKey(key): IdempotencyKey,
    ApiPath((id, table)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<InsertRowsRequest>,
) -> ApiResult<(StatusCode, Json<InsertRowsResponse>)> {
    let base = base_id(&id)?;
    let (info, batch) = engine(&state)?
        .read(base.bucket(), Consistency::default(), move |s| {
            let info = s.table(&base, &table)?;
            let batch = s.read_system(&base, |c| rows::can_batch(c, &info.name))?;
            Ok((info, batch))
        })
        .await?;
    if let Some(after) = &req.after {
        shoal_storage::idempotency::check_key(after).map_err(|_| {
            Error::InvalidInput(format!(
                "\"after\" must be an idempotency key: 1 to {} printable ASCII characters \
                 without spaces",
                shoal_storage::idempotency::MAX_KEY_LEN
            ))
        })?;
    }
    let (statements, sizes) = rows::insert_batched(&info, &req.rows, batch)?;
    match engine(&state)?
        .write_after(
            Command::Execute { base, statements, transaction: true },
            key.as_deref(),
            req.after.as_deref(),
        )
        .await?
    {
        // Each INSERT put its rows at consecutive rowids, ending at its
        // last insert rowid.
        (index, Output::Executed { results }) => Ok((
            StatusCode::CREATED,
            Json(InsertRowsResponse {
                rowids: results
                    .iter()
                    .zip(&sizes)
                    .flat_map(|(r, &n)| (0..n as i64).rev().map(move |b| r.last_insert_rowid - b))
                    .collect(),
                index,
            }),
        )),
        (_, other) => Err(unexpected(other).into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowsParams {
    limit: Option<u64>,
    offset: Option<u64>,
    order_by: Option<String>,
    desc: Option<bool>,
}

pub async fn list_rows(
    State(state): State<Arc<AppState>>,
    ApiPath((id, table)): ApiPath<(String, String)>,
    ApiQuery(p): ApiQuery<RowsParams>,
) -> ApiResult<Json<RowList>> {
    let base = base_id(&id)?;
    let max = engine(&state)?.store().options().max_result_rows as u64;
    let limit = p.limit.unwrap_or(100.min(max));
    if limit == 0 || limit > max {
        return Err(Error::InvalidInput(format!("limit must be between 1 and {max}")).into());
    }
    let offset = p.offset.unwrap_or(0);
    let rows = engine(&state)?
        .read(base.bucket(), Consistency::default(), move |s| {
            let info = s.table(&base, &table)?;
            let stmt =
                rows::page(&info, limit, offset, p.order_by.as_deref(), p.desc.unwrap_or(false))?;
            let r = s.query(&base, &stmt.sql, &stmt.params)?;
            Ok(rows::to_rows(&r.columns, r.rows))
        })
        .await?;
    Ok(Json(RowList { rows, limit, offset }))
}

pub async fn get_row(
    State(state): State<Arc<AppState>>,
    ApiPath((id, table, rowid)): ApiPath<(String, String, i64)>,
) -> ApiResult<Json<Row>> {
    let base = base_id(&id)?;
    let row = engine(&state)?
        .read(base.bucket(), Consistency::default(), move |s| {
            let info = s.table(&base, &table)?;
            let stmt = rows::get(&info, rowid);
            let r = s.query(&base, &stmt.sql, &stmt.params)?;
            rows::to_rows(&r.columns, r.rows)
                .pop()
                .ok_or_else(|| Error::NotFound(format!("no row {rowid} in table {:?}", info.name)))
        })
        .await?;
    Ok(Json(row))
}

pub async fn update_row(
    State(state): State<Arc<AppState>>,
    IdempotencyKey(key): IdempotencyKey,
    ApiPath((id, table, rowid)): ApiPath<(String, String, i64)>,
    ApiJson(req): ApiJson<UpdateRowRequest>,
) -> ApiResult<Json<WriteResponse>> {
    let base = base_id(&id)?;
    let info = engine(&state)?
        .read(base.bucket(), Consistency::default(), move |s| s.table(&base, &table))
        .await?;
    let statement = rows::update(&info, rowid, &req.values)?;
    write_one_row(&state, base, statement, rowid, &info.name, key.as_deref()).await
}

pub async fn delete_row(
    State(state): State<Arc<AppState>>,
    IdempotencyKey(key): IdempotencyKey,
    ApiPath((id, table, rowid)): ApiPath<(String, String, i64)>,
) -> ApiResult<Json<WriteResponse>> {
    let base = base_id(&id)?;
    let info = engine(&state)?
        .read(base.bucket(), Consistency::default(), move |s| s.table(&base, &table))
        .await?;
    write_one_row(&state, base, rows::delete(&info, rowid), rowid, &info.name, key.as_deref()).await
}

/// Runs a statement that must touch exactly one row, or answers 404.
async fn write_one_row(
    state: &AppState,
    base: BaseId,
    statement: shoal_types::api::Statement,
    rowid: i64,
    table: &str,
    key: Option<&str>,
) -> ApiResult<Json<WriteResponse>> {
    match engine(state)?
        .write(Command::Execute { base, statements: vec![statement], transaction: true }, key)
        .await?
    {
        (index, Output::Executed { results })
            if results.first().is_some_and(|r| r.rows_affected > 0) =>
        {
            Ok(Json(WriteResponse { index }))
        }
        (_, Output::Executed { .. }) => {
            Err(Error::NotFound(format!("no row {rowid} in table {table:?}")).into())
        }
        (_, other) => Err(unexpected(other).into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChecksumParams {
    #[serde(default)]
    consistency: Consistency,
}

/// `GET /v1/bases/{id}/checksum`: a hash of the base's content on this
/// replica (with `consistency=none`), for comparing replicas.
pub async fn checksum(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<ChecksumParams>,
) -> ApiResult<Json<shoal_types::api::Checksum>> {
    let base = base_id(&id)?;
    let engine = engine(&state)?;
    let checksum = engine.read(base.bucket(), p.consistency, move |s| s.checksum(&base)).await?;
    let applied_index = engine.multi().applied(base.bucket().0);
    Ok(Json(shoal_types::api::Checksum { checksum, applied_index }))
}

/// `GET /v1/bases/{id}/backup`: a consistent copy of the base's SQLite
/// file, read like a query (linearizable by default). The applied index it
/// reflects is in `X-Shoal-Applied-Index`.
pub async fn backup(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<ChecksumParams>,
) -> ApiResult<axum::response::Response> {
    let base = base_id(&id)?;
    let engine = engine(&state)?;
    let bytes = engine
        .read(base.bucket(), p.consistency, move |s| {
            let dir = tempfile::tempdir()
                .map_err(|e| Error::Io(format!("cannot make a temporary directory: {e}")))?;
            let path = dir.path().join("backup.sqlite");
            s.backup_to(&base, &path)?;
            std::fs::read(&path).map_err(|e| Error::Io(format!("cannot read the backup: {e}")))
        })
        .await?;
    let applied_index = engine.multi().applied(base.bucket().0);
    let headers = [
        (axum::http::header::CONTENT_TYPE, "application/vnd.sqlite3".to_string()),
        (axum::http::HeaderName::from_static("x-shoal-applied-index"), applied_index.to_string()),
    ];
    Ok(axum::response::IntoResponse::into_response((headers, bytes)))
}

/// `GET /v1/bases/{id}/location`: the bucket's replicas and leader, with the
/// public URLs a client or browser reaches them at. A node that holds no
/// replica (or knows no leader) asks the replicas, once.
pub async fn location(
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<BaseLocation>> {
    let bucket = base_id(&id)?.bucket();
    let engine = engine(&state)?;
    let (mine, hosted) = engine.location(bucket);
    if (hosted && mine.leader.is_some()) || headers.contains_key(crate::forward::FORWARDED) {
        return Ok(Json(mine));
    }
    for url in engine.replica_local_urls(bucket) {
        let mut ask = state
            .forwarder
            .get(format!("{}/v1/bases/{id}/location", url.trim_end_matches('/')))
            .header(crate::forward::FORWARDED, "1")
            .timeout(std::time::Duration::from_secs(2));
        if let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) {
            ask = ask.header(axum::http::header::AUTHORIZATION, auth);
        }
        let Ok(answer) = ask.send().await else { continue };
        if let Ok(theirs) = answer.json::<BaseLocation>().await
            && theirs.leader.is_some()
            && theirs.epoch >= mine.epoch
        {
            return Ok(Json(theirs));
        }
    }
    Ok(Json(mine))
}
