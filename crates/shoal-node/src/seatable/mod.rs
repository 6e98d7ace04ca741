//! The SeaTable-compatible API: what SeaTable's Python client (and scripts
//! written for it) call, served over Shoal's bases. See docs/seatable.md.
//!
//! - **API tokens** belong to one base, with `rw` or `r` rights. An admin
//!   makes them (`/v1/bases/{id}/api-tokens`); they are stored hashed in the
//!   base and replicated like any write. A token starts with its base's id,
//!   so any node can tell where to check it.
//! - **Access tokens** come from `GET /api/v2.1/dtable/app-access-token/`
//!   for an API token: a JWT (HS256, keyed by the cluster's admin token)
//!   naming the base, the rights and the API token's hash, valid for three
//!   days, as the client expects. Every later call carries one; each call
//!   also checks the API token still exists, so a revoke takes effect at
//!   once.
//! - **The data calls** live under `/api-gateway/api/v2/dtables/{uuid}/`.
//!   Writes are composed here, on the leader, with every id and time fixed
//!   before the command is logged (see `shoal_storage::seatable`).
//!
//! Errors have SeaTable's shape, `{"error_msg": "..."}`; a request a
//! follower cannot answer still says `not_leader` in Shoal's shape, which
//! the forwarding middleware turns into the leader's answer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Digest as _;
use shoal_storage::seatable::{self as st, Kind, Meta, NewColumn, Page, Stamp, TokenRecord};
use shoal_storage::{Command, Output};
use shoal_types::api::{
    ApiToken, ApiTokenInfo, ApiTokenList, Consistency, CreateApiTokenRequest, ExecuteResult,
    Params, Statement,
};
use shoal_types::{BaseId, Error};

use crate::AppState;
use crate::api::engine;

mod io;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
pub use io::socket_layers;

/// How long an access token is good for (the client assumes three days).
const ACCESS_TTL: Duration = Duration::from_secs(3 * 24 * 3600);

/// An error in SeaTable's shape.
#[derive(Debug)]
pub enum StError {
    /// Any Shoal error, with its usual status.
    Api(Error),
    /// Authenticated, but not allowed: 403.
    Forbidden(String),
}

impl From<Error> for StError {
    fn from(e: Error) -> Self {
        StError::Api(e)
    }
}

impl From<ApiError> for StError {
    fn from(e: ApiError) -> Self {
        StError::Api(e.0)
    }
}

fn message(e: &Error) -> String {
    e.to_body().error.message
}

impl IntoResponse for StError {
    fn into_response(self) -> Response {
        match self {
            // Forwarded to the leader by the middleware: keep Shoal's shape.
            StError::Api(e @ Error::NotLeader { .. }) => ApiError(e).into_response(),
            StError::Api(e) => {
                let status = crate::error::status(&e);
                if status.is_server_error() {
                    tracing::warn!(error = %e, "SeaTable API request failed");
                }
                (status, Json(json!({ "error_msg": message(&e) }))).into_response()
            }
            StError::Forbidden(m) => {
                (StatusCode::FORBIDDEN, Json(json!({ "error_msg": m }))).into_response()
            }
        }
    }
}

type StResult<T> = Result<T, StError>;

fn invalid(m: impl Into<String>) -> StError {
    StError::Api(Error::InvalidInput(m.into()))
}

fn unauthorized(m: impl Into<String>) -> StError {
    StError::Api(Error::Unauthorized(m.into()))
}

/// The routes of the SeaTable API (behind the forwarding middleware, and
/// not behind the admin token: they check their own tokens).
pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    const GW: &str = "/api-gateway/api/v2/dtables/{uuid}";
    let r = Router::new()
        .route("/api/v2.1/dtable/app-access-token/", get(access_token))
        .route("/api/v2.1/dtable/app-access-token", get(access_token))
        .route(&format!("{GW}/metadata/"), get(metadata))
        .route(&format!("{GW}/tables/"), post(add_table).put(rename_table).delete(delete_table))
        .route(
            &format!("{GW}/columns/"),
            get(list_columns).post(insert_column).put(update_column).delete(delete_column),
        )
        .route(
            &format!("{GW}/rows/"),
            get(list_rows).post(append_rows).put(update_rows).delete(delete_rows),
        )
        .route(&format!("{GW}/rows/{{row_id}}/"), get(get_row))
        .route(&format!("{GW}/filtered-rows/"), get(filtered_rows))
        .route(&format!("{GW}/sql"), post(sql))
        .route(&format!("{GW}/sql/"), post(sql));
    r.route_layer(middleware::from_fn_with_state(state, crate::forward::forward))
}

/// The admin routes that manage a base's API tokens (`/v1`, admin token).
pub fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/bases/{id}/api-tokens", post(create_api_token).get(list_api_tokens))
        .route("/v1/bases/{id}/api-tokens/{name}", axum::routing::delete(revoke_api_token))
}

// ---------------------------------------------------------------- tokens

/// An API token: the base's id (32 hex digits), then 32 random ones.
fn new_api_token(base: BaseId) -> String {
    let secret: [u8; 16] = rand::rng().random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{hex}", base.0.simple())
}

pub(crate) fn token_hash(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

pub use shoal_http::auth::{api_token_base, token_base};

fn now() -> String {
    // SeaTable's form: milliseconds and an explicit UTC offset.
    let t = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    t.strip_suffix('Z').map_or(t.clone(), |s| format!("{s}+00:00"))
}

fn info(r: TokenRecord) -> ApiTokenInfo {
    ApiTokenInfo { name: r.name, permission: r.permission, created_at: r.created_at }
}

/// `POST /v1/bases/{id}/api-tokens`: a new API token for the base; the
/// token itself is in this answer only.
async fn create_api_token(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CreateApiTokenRequest>,
) -> ApiResult<(StatusCode, Json<ApiToken>)> {
    let base: BaseId = id.parse()?;
    if req.permission != "rw" && req.permission != "r" {
        return Err(Error::InvalidInput("permission must be \"rw\" or \"r\"".into()).into());
    }
    if req.name.as_ref().is_some_and(|n| n.trim().is_empty() || n.len() > 128) {
        return Err(Error::InvalidInput("a token name is 1 to 128 bytes".into()).into());
    }
    // Also checks that the base exists (a write would make its file otherwise).
    let taken = tokens(&state, base).await?;
    let name = req.name.unwrap_or_else(|| {
        (1..)
            .map(|i| format!("token-{i}"))
            .find(|n| !taken.iter().any(|t| &t.name == n))
            .unwrap_or_default()
    });
    let token = new_api_token(base);
    let record = TokenRecord { name, permission: req.permission, created_at: now() };
    let statements = st::add_token(&token_hash(&token), &record);
    engine(&state)?.write(Command::System { base, statements }, None).await.map_err(
        |e| match e {
            Error::Constraint(_) => {
                Error::Conflict(format!("a token named {:?} exists", record.name))
            }
            e => e,
        },
    )?;
    Ok((
        StatusCode::CREATED,
        Json(ApiToken { api_token: token, dtable_uuid: base, info: info(record) }),
    ))
}

/// The tokens of a base that exists (`NotFound` if not).
async fn tokens(state: &AppState, base: BaseId) -> Result<Vec<TokenRecord>, Error> {
    engine(state)?
        .read(base.bucket(), Consistency::default(), move |s| {
            s.get_base(&base)?;
            s.read_system(&base, st::list_tokens)
        })
        .await
}

/// `GET /v1/bases/{id}/api-tokens`: the base's tokens (names, not secrets).
async fn list_api_tokens(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ApiTokenList>> {
    let base: BaseId = id.parse()?;
    let tokens = tokens(&state, base).await?;
    Ok(Json(ApiTokenList { api_tokens: tokens.into_iter().map(info).collect() }))
}

/// `DELETE /v1/bases/{id}/api-tokens/{name}`: revokes a token; the access
/// tokens made from it stop working at once.
async fn revoke_api_token(
    State(state): State<Arc<AppState>>,
    ApiPath((id, name)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let base: BaseId = id.parse()?;
    if !tokens(&state, base).await?.iter().any(|t| t.name == name) {
        return Err(Error::NotFound(format!("base {base} has no API token named {name:?}")).into());
    }
    let statements = st::revoke_token(&name);
    engine(&state)?.write(Command::System { base, statements }, None).await?;
    Ok(Json(json!({ "success": true })))
}

/// What an access token says.
#[derive(Serialize, Deserialize)]
struct Claims {
    exp: u64,
    iat: u64,
    dtable_uuid: String,
    permission: String,
    /// The API token's name (the writer recorded on rows).
    app: String,
    /// The API token's hash: checked on every call, so a revoke bites.
    tid: String,
}

fn signing_key(admin_token: &str) -> Vec<u8> {
    let mut h = sha2::Sha256::new();
    h.update(b"shoal seatable access tokens v1\0");
    h.update(admin_token.as_bytes());
    h.finalize().to_vec()
}

fn bearer(headers: &HeaderMap) -> StResult<&str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("missing token: send \"Authorization: Token TOKEN\""))?;
    value
        .strip_prefix("Token ")
        .or_else(|| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| unauthorized("the Authorization header must be \"Token TOKEN\""))
}

/// The server a client should use for a base: the one it asked (through a
/// proxy, the proxy's address as the proxy passes it on).
fn server_url(headers: &HeaderMap) -> String {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    let host = get("x-forwarded-host").or_else(|| get("host")).unwrap_or("127.0.0.1");
    let proto = get("x-forwarded-proto").unwrap_or("http");
    format!("{proto}://{host}/")
}

/// `GET /api/v2.1/dtable/app-access-token/`: an access token for the base
/// of the API token the request carries.
async fn access_token(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> StResult<Json<Value>> {
    let token = bearer(&headers)?;
    let base = token_base(token).ok_or_else(|| unauthorized("invalid API token"))?;
    let hash = token_hash(token);
    let engine = engine(&state)?;
    let lookup = hash.clone();
    let found = engine
        .read(base.bucket(), Consistency::default(), move |s| {
            let info = match s.get_base(&base) {
                Ok(info) => info,
                Err(Error::NotFound(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            Ok(s.read_system(&base, |c| st::find_token(c, &lookup))?.map(|t| (info, t)))
        })
        .await
        .map_err(|e| match e {
            // A node that holds no replica of the base: the token names a
            // base this cluster may not have; answer as for a bad token.
            Error::Misdirected { .. } => Error::Unauthorized("invalid API token".into()),
            e => e,
        })?;
    let Some((info, record)) = found else {
        return Err(unauthorized("invalid API token"));
    };
    let iat = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let claims = Claims {
        exp: iat + ACCESS_TTL.as_secs(),
        iat,
        dtable_uuid: base.to_string(),
        permission: record.permission.clone(),
        app: record.name.clone(),
        tid: hash,
    };
    let access = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&signing_key(&state.options.admin_token))
            .map_err(|e| Error::Internal(format!("cannot make the signing key: {e}")))?,
    )
    .map_err(|e| Error::Internal(format!("cannot sign an access token: {e}")))?;
    let server = server_url(&headers);
    Ok(Json(json!({
        "app_name": record.name,
        "access_token": access,
        "dtable_uuid": base.to_string(),
        "dtable_server": server,
        "dtable_socket": server,
        "dtable_db": server,
        "workspace_id": 1,
        "dtable_name": info.name.unwrap_or_else(|| base.to_string()),
        "use_api_gateway": true,
    })))
}

/// Who is calling, checked against the base of the path.
#[derive(Clone)]
struct Caller {
    base: BaseId,
    tid: String,
    user: String,
}

fn caller(state: &AppState, headers: &HeaderMap, uuid: &str, write: bool) -> StResult<Caller> {
    check_access(state, bearer(headers)?, uuid, write)
}

/// Checks an access token for base `uuid` (and for writing).
fn check_access(state: &AppState, token: &str, uuid: &str, write: bool) -> StResult<Caller> {
    let key = jsonwebtoken::DecodingKey::from_secret(&signing_key(&state.options.admin_token))
        .map_err(|e| Error::Internal(format!("cannot make the signing key: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.leeway = 0;
    let claims = match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
        Ok(d) => d.claims,
        Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
            return Err(StError::Forbidden("Token expired.".into()));
        }
        Err(_) => {
            return Err(unauthorized(
                "invalid access token; get one from /api/v2.1/dtable/app-access-token/",
            ));
        }
    };
    let base: BaseId = uuid.parse().map_err(|_| invalid(format!("{uuid:?} is not a base id")))?;
    let theirs: BaseId =
        claims.dtable_uuid.parse().map_err(|_| unauthorized("invalid access token"))?;
    if theirs != base {
        return Err(StError::Forbidden(format!("this token is for base {theirs}, not {base}")));
    }
    if write && claims.permission != "rw" {
        return Err(StError::Forbidden("this token is read-only".into()));
    }
    Ok(Caller { base, tid: claims.tid, user: format!("{}@auth.local", claims.app) })
}

fn revoked() -> StError {
    unauthorized("the API token of this access token was revoked")
}

/// The base's SeaTable catalog, once this node may serve a read of it and
/// the caller's API token still exists. The store keeps it between calls
/// while nothing can have changed it, so most calls read nothing here.
async fn catalog(state: &AppState, who: &Caller) -> StResult<Arc<st::Loaded>> {
    let engine = engine(state)?;
    let base = who.base;
    engine.readable(base.bucket(), Consistency::default()).await?;
    let loaded = match engine.store().cached_seatable(&base) {
        Some(loaded) => loaded,
        None => engine.local(move |s| s.seatable(&base)).await?,
    };
    if !loaded.has_token(&who.tid) {
        return Err(revoked());
    }
    Ok(loaded)
}

/// Reads the base as Shoal, after checking the caller's API token still
/// exists; `f` gets the SeaTable catalog and the connection.
async fn read<T: Send + 'static>(
    state: &AppState,
    who: &Caller,
    f: impl FnOnce(&Meta, &rusqlite::Connection) -> shoal_types::Result<T> + Send + 'static,
) -> StResult<T> {
    let loaded = catalog(state, who).await?;
    let base = who.base;
    Ok(engine(state)?.local(move |s| s.read_system(&base, |c| f(&loaded.meta, c))).await?)
}

async fn write(
    state: &AppState,
    base: BaseId,
    statements: Vec<Statement>,
) -> StResult<Vec<ExecuteResult>> {
    match engine(state)?.write(Command::System { base, statements }, None).await? {
        (_, Output::Executed { results }) => Ok(results),
        (_, other) => Err(Error::Internal(format!("unexpected command output {other:?}")).into()),
    }
}

/// Fresh ids from the thread's random generator.
struct RandomIds;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl st::Ids for RandomIds {
    fn short(&mut self, taken: &HashSet<String>) -> String {
        let mut rng = rand::rng();
        loop {
            let id: String =
                (0..4).map(|_| ALNUM[rng.random_range(0..ALNUM.len())] as char).collect();
            if !taken.contains(&id) {
                return id;
            }
        }
    }
}

/// A writing call's caller, checked against the base of its path, and its
/// JSON body.
struct Write<T>(Caller, T);

impl<T: serde::de::DeserializeOwned> FromRequest<Arc<AppState>> for Write<T> {
    type Rejection = StError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> StResult<Self> {
        let (mut parts, b) = req.into_parts();
        let ApiPath(uuid) = ApiPath::<String>::from_request_parts(&mut parts, state).await?;
        let who = caller(state, &parts.headers, &uuid, true)?;
        let ApiJson(body) = ApiJson::from_request(Request::from_parts(parts, b), state).await?;
        Ok(Write(who, body))
    }
}

/// A reading call's caller, checked against the base of its path, and its
/// query string.
struct Reading(Caller, TableQuery);

impl FromRequestParts<Arc<AppState>> for Reading {
    type Rejection = StError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> StResult<Self> {
        let ApiPath(params) =
            ApiPath::<Vec<(String, String)>>::from_request_parts(parts, state).await?;
        let uuid = params.iter().find(|(k, _)| k == "uuid").map_or("", |(_, v)| v.as_str());
        let who = caller(state, &parts.headers, uuid, false)?;
        let ApiQuery(q) = ApiQuery::from_request_parts(parts, state).await?;
        Ok(Reading(who, q))
    }
}

/// The table a request body names (`table_id` wins over `table_name`).
#[derive(Deserialize)]
struct TableRef {
    table_name: Option<String>,
    table_id: Option<String>,
}

impl TableRef {
    fn of<'m>(&self, meta: &'m Meta) -> shoal_types::Result<&'m st::Table> {
        table_of(meta, self.table_name.as_deref(), self.table_id.as_deref())
    }
}

/// The table a request names (`table_id` wins over `table_name`).
fn table_of<'m>(
    meta: &'m Meta,
    name: Option<&str>,
    id: Option<&str>,
) -> shoal_types::Result<&'m st::Table> {
    match (id, name) {
        (Some(id), _) => meta.table(id),
        (None, Some(name)) => meta.table(name),
        (None, None) => Err(Error::InvalidInput("table_name is missing".into())),
    }
}

// ---------------------------------------------------------------- data

/// `GET metadata/`.
async fn metadata(
    State(state): State<Arc<AppState>>,
    Reading(who, _): Reading,
) -> StResult<Json<Value>> {
    let meta = read(&state, &who, |m, _| Ok(m.describe())).await?;
    Ok(Json(json!({ "metadata": meta })))
}

#[derive(Deserialize)]
struct ColumnSpec {
    column_name: String,
    column_type: String,
    #[serde(default)]
    column_data: Option<Map<String, Value>>,
}

fn new_column(name: String, kind: &str, data: Option<Map<String, Value>>) -> StResult<NewColumn> {
    let kind = Kind::parse(kind)?;
    let mut data = data.unwrap_or_default();
    let mut options = Vec::new();
    if let Some(given) = data.remove("options") {
        let Value::Array(given) = given else {
            return Err(invalid("column_data.options must be a list"));
        };
        for o in given {
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| invalid("every option needs a name"))?;
            let color = o.get("color").and_then(Value::as_str).unwrap_or("#FFFCB5");
            options.push((name.to_string(), color.to_string()));
        }
    }
    Ok(NewColumn { name, kind, data, options })
}

#[derive(Deserialize)]
struct AddTable {
    table_name: String,
    #[serde(default)]
    columns: Vec<ColumnSpec>,
}

/// `POST tables/`: a new table; answers the table as metadata shows it.
async fn add_table(
    State(state): State<Arc<AppState>>,
    Write(who, req): Write<AddTable>,
) -> StResult<Json<Value>> {
    let mut columns = req
        .columns
        .into_iter()
        .map(|c| new_column(c.column_name, &c.column_type, c.column_data))
        .collect::<StResult<Vec<_>>>()?;
    if columns.is_empty() {
        // SeaTable starts a table with one text column.
        columns.push(NewColumn {
            name: "Name".into(),
            kind: Kind::Text,
            data: Map::new(),
            options: vec![],
        });
    }
    let name = req.table_name;
    let (id, statements) = read(&state, &who, move |meta, c| {
        not_taken_by_sql(meta, c, &name)?;
        st::create_table(meta, &name, &columns, &mut RandomIds)
    })
    .await?;
    write(&state, who.base, statements).await?;
    let table = read(&state, &who, move |meta, _| Ok(meta.table(&id)?.describe())).await?;
    Ok(Json(table))
}

/// Refuses `name` for a SeaTable table when a table made with SQL has it.
fn not_taken_by_sql(meta: &Meta, c: &rusqlite::Connection, name: &str) -> shoal_types::Result<()> {
    if meta.table(name).is_err() && st::name_taken(c, name)? {
        return Err(Error::Conflict(format!(
            "the base has a table named {name:?} (made with SQL); choose another name"
        )));
    }
    Ok(())
}

/// `DELETE tables/`.
async fn delete_table(
    State(state): State<Arc<AppState>>,
    Write(who, table): Write<TableRef>,
) -> StResult<Json<Value>> {
    let statements = read(&state, &who, move |meta, _| Ok(st::drop_table(table.of(meta)?))).await?;
    write(&state, who.base, statements).await?;
    Ok(Json(json!({ "success": true })))
}

#[derive(Deserialize)]
struct RenameTable {
    #[serde(flatten)]
    table: TableRef,
    new_table_name: String,
}

/// `PUT tables/`: renames a table; answers the table as metadata shows it.
async fn rename_table(
    State(state): State<Arc<AppState>>,
    Write(who, req): Write<RenameTable>,
) -> StResult<Json<Value>> {
    let new_name = req.new_table_name;
    let (id, statements) = read(&state, &who, move |meta, c| {
        let t = req.table.of(meta)?;
        not_taken_by_sql(meta, c, &new_name)?;
        Ok((t.id.clone(), st::rename_table(meta, t, &new_name)?))
    })
    .await?;
    write(&state, who.base, statements).await?;
    let table = read(&state, &who, move |meta, _| Ok(meta.table(&id)?.describe())).await?;
    Ok(Json(table))
}

#[derive(Deserialize)]
struct UpdateColumn {
    #[serde(flatten)]
    table: TableRef,
    op_type: String,
    column: String,
    new_column_name: Option<String>,
}

/// `PUT columns/`: of its operations, `rename_column`; answers the column.
async fn update_column(
    State(state): State<Arc<AppState>>,
    Write(who, req): Write<UpdateColumn>,
) -> StResult<Json<Value>> {
    if req.op_type != "rename_column" {
        return Err(invalid(format!(
            "op_type {:?} is not supported; Shoal renames columns (\"rename_column\") only",
            req.op_type
        )));
    }
    let Some(new_name) = req.new_column_name else {
        return Err(invalid("new_column_name is missing".to_string()));
    };
    let (table_id, key, statements) = read(&state, &who, move |meta, _| {
        let t = req.table.of(meta)?;
        let c = t.column(&req.column)?;
        Ok((t.id.clone(), c.key.clone(), st::rename_column(t, c, &new_name)?))
    })
    .await?;
    write(&state, who.base, statements).await?;
    let column =
        read(&state, &who, move |meta, _| Ok(meta.table(&table_id)?.column(&key)?.describe()))
            .await?;
    Ok(Json(column))
}

#[derive(Deserialize)]
struct ColumnRef {
    #[serde(flatten)]
    table: TableRef,
    column: String,
}

/// `DELETE columns/`: deletes a column and its values.
async fn delete_column(
    State(state): State<Arc<AppState>>,
    Write(who, req): Write<ColumnRef>,
) -> StResult<Json<Value>> {
    let statements = read(&state, &who, move |meta, _| {
        let t = req.table.of(meta)?;
        st::delete_column(t, t.column(&req.column)?)
    })
    .await?;
    write(&state, who.base, statements).await?;
    Ok(Json(json!({ "success": true })))
}

#[derive(Deserialize)]
struct TableQuery {
    table_name: Option<String>,
    table_id: Option<String>,
    view_name: Option<String>,
    convert_keys: Option<String>,
    order_by: Option<String>,
    direction: Option<String>,
    start: Option<u64>,
    limit: Option<u64>,
}

impl TableQuery {
    /// The table the query names, in the one view Shoal keeps.
    fn table<'m>(&self, meta: &'m Meta) -> shoal_types::Result<&'m st::Table> {
        check_view(self.view_name.as_deref())?;
        table_of(meta, self.table_name.as_deref(), self.table_id.as_deref())
    }
}

fn check_view(view: Option<&str>) -> shoal_types::Result<()> {
    match view {
        Some(v) if v != st::DEFAULT_VIEW => Err(Error::NotFound(format!(
            "no view named {v:?}; Shoal keeps one view per table, {:?}",
            st::DEFAULT_VIEW
        ))),
        _ => Ok(()),
    }
}

fn truthy(v: Option<&str>, default: bool) -> bool {
    v.map_or(default, |v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"))
}

/// `GET columns/`.
async fn list_columns(
    State(state): State<Arc<AppState>>,
    Reading(who, q): Reading,
) -> StResult<Json<Value>> {
    let columns = read(&state, &who, move |meta, _| {
        let t = q.table(meta)?;
        Ok(t.columns.iter().map(st::Column::describe).collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(json!({ "columns": columns })))
}

#[derive(Deserialize)]
struct InsertColumn {
    #[serde(flatten)]
    table: TableRef,
    column_name: String,
    column_type: String,
    #[serde(default)]
    column_data: Option<Map<String, Value>>,
}

/// `POST columns/`: a new column at the end of the table (an
/// `anchor_column` is accepted and ignored: Shoal keeps no column order
/// per view).
async fn insert_column(
    State(state): State<Arc<AppState>>,
    Write(who, req): Write<InsertColumn>,
) -> StResult<Json<Value>> {
    let column = new_column(req.column_name, &req.column_type, req.column_data)?;
    let (table_id, key, statements) = read(&state, &who, move |meta, _| {
        let t = req.table.of(meta)?;
        let (key, statements) = st::add_column(t, &column, &mut RandomIds)?;
        Ok((t.id.clone(), key, statements))
    })
    .await?;
    write(&state, who.base, statements).await?;
    let column =
        read(&state, &who, move |meta, _| Ok(meta.table(&table_id)?.column(&key)?.describe()))
            .await?;
    Ok(Json(column))
}

fn page_of(q: &TableQuery, default_limit: u64) -> StResult<Page> {
    let limit = q.limit.unwrap_or(default_limit);
    if limit == 0 || limit > st::MAX_LIMIT {
        return Err(invalid(format!("limit must be between 1 and {}", st::MAX_LIMIT)));
    }
    let desc = match q.direction.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(d) => {
            return Err(invalid(format!("direction must be \"asc\" or \"desc\", not {d:?}")));
        }
    };
    Ok(Page {
        order_by: q.order_by.clone(),
        desc,
        start: q.start.unwrap_or(0),
        limit,
        convert_keys: truthy(q.convert_keys.as_deref(), true),
        row_id: None,
        filters: vec![],
        any: false,
    })
}

/// `GET rows/`: a page of rows (1000 at most, SeaTable's default).
async fn list_rows(
    State(state): State<Arc<AppState>>,
    Reading(who, q): Reading,
) -> StResult<Json<Value>> {
    let page = page_of(&q, st::MAX_LIMIT)?;
    let rows = read(&state, &who, move |meta, c| {
        let t = q.table(meta)?;
        st::read_rows(c, t, &page)
    })
    .await?;
    Ok(Json(json!({ "rows": rows })))
}

/// `GET rows/{row_id}/`.
async fn get_row(
    State(state): State<Arc<AppState>>,
    Reading(who, q): Reading,
    p: Result<ApiPath<(String, String)>, ApiError>,
) -> StResult<Json<Value>> {
    let ApiPath((_, row_id)) = p?;
    let mut page = page_of(&q, 1)?;
    page.row_id = Some(row_id.clone());
    let row = read(&state, &who, move |meta, c| {
        let t = q.table(meta)?;
        st::read_rows(c, t, &page)?
            .pop()
            .ok_or_else(|| Error::NotFound(format!("no row {row_id:?} in table {:?}", t.name)))
    })
    .await?;
    Ok(Json(Value::Object(row)))
}

#[derive(Deserialize)]
struct FilterBody {
    filters: Vec<FilterSpec>,
    #[serde(default)]
    filter_conjunction: Option<String>,
}

#[derive(Deserialize)]
struct FilterSpec {
    column_name: String,
    filter_predicate: String,
    #[serde(default)]
    filter_term: Value,
}

/// `GET filtered-rows/` (the filters in a JSON body).
async fn filtered_rows(
    State(state): State<Arc<AppState>>,
    Reading(who, q): Reading,
    f: Result<ApiJson<FilterBody>, ApiError>,
) -> StResult<Json<Value>> {
    let ApiJson(f) = f?;
    let mut page = page_of(&q, st::MAX_LIMIT)?;
    page.any = match f.filter_conjunction.as_deref() {
        None | Some("And") => false,
        Some("Or") => true,
        Some(c) => {
            return Err(invalid(format!(
                "filter_conjunction must be \"And\" or \"Or\", not {c:?}"
            )));
        }
    };
    page.filters = f
        .filters
        .into_iter()
        .map(|f| st::Filter {
            column: f.column_name,
            predicate: f.filter_predicate,
            term: f.filter_term,
        })
        .collect();
    let rows = read(&state, &who, move |meta, c| {
        let t = q.table(meta)?;
        st::read_rows(c, t, &page)
    })
    .await?;
    Ok(Json(json!({ "rows": rows })))
}

#[derive(Deserialize)]
struct AppendRows {
    #[serde(flatten)]
    table: TableRef,
    rows: Vec<Map<String, Value>>,
}

/// `POST rows/`: appends one or many rows (1000 at most per call).
async fn append_rows(
    State(state): State<Arc<AppState>>,
    Write(who, req): Write<AppendRows>,
) -> StResult<Json<Appended>> {
    if req.rows.len() as u64 > st::MAX_LIMIT {
        return Err(invalid(format!("at most {} rows per call", st::MAX_LIMIT)));
    }
    let stamp = Stamp { time: now(), user: who.user.clone() };
    // Composed right here: the catalog is all it reads.
    let loaded = catalog(&state, &who).await?;
    let t = req.table.of(&loaded.meta)?;
    let mut first_row = req.rows.first().map(|r| st::appended_row(t, r, &stamp)).transpose()?;
    let (statements, sizes) = st::append_rows(t, &req.rows, &stamp, &mut RandomIds)?;
    let results = write(&state, who.base, statements).await?;
    // The inserts come last; each put its rows at consecutive rowids,
    // ending at its last insert rowid, and a row's rowid names it.
    let inserts = &results[results.len().saturating_sub(sizes.len())..];
    let ids: Vec<String> = inserts
        .iter()
        .zip(&sizes)
        .flat_map(|(r, &n)| {
            (0..n as i64).rev().map(move |back| st::row_id(r.last_insert_rowid - back))
        })
        .collect();
    if let (Some(row), Some(id)) = (first_row.as_mut(), ids.first()) {
        row.insert("_id".into(), id.clone().into());
    }
    Ok(Json(Appended { inserted_row_count: ids.len(), row_ids: ids, first_row }))
}

/// The answer to `POST rows/`, serialized as it is (no JSON tree built).
#[derive(Serialize)]
struct Appended {
    inserted_row_count: usize,
    #[serde(serialize_with = "row_ids")]
    row_ids: Vec<String>,
    first_row: Option<Map<String, Value>>,
}

/// Row ids as SeaTable lists them: `[{"_id": ...}, ...]`.
fn row_ids<S: serde::Serializer>(ids: &[String], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Id<'a> {
        _id: &'a str,
    }
    s.collect_seq(ids.iter().map(|id| Id { _id: id }))
}

#[derive(Deserialize)]
struct UpdateRows {
    #[serde(flatten)]
    table: TableRef,
    updates: Vec<UpdateOne>,
}

#[derive(Deserialize)]
struct UpdateOne {
    row_id: String,
    row: Map<String, Value>,
}

fn missing(
    table: &st::Table,
    wanted: &[String],
    found: &HashSet<String>,
) -> shoal_types::Result<()> {
    match wanted.iter().find(|id| !found.contains(*id)) {
        Some(id) => Err(Error::NotFound(format!("no row {id:?} in table {:?}", table.name))),
        None => Ok(()),
    }
}

/// `PUT rows/`: updates rows by id; every id must exist, or nothing changes.
async fn update_rows(
    State(state): State<Arc<AppState>>,
    Write(who, req): Write<UpdateRows>,
) -> StResult<Json<Value>> {
    let stamp = Stamp { time: now(), user: who.user.clone() };
    let statements = read(&state, &who, move |meta, c| {
        let t = req.table.of(meta)?;
        let ids: Vec<String> = req.updates.iter().map(|u| u.row_id.clone()).collect();
        missing(t, &ids, &st::existing_ids(c, t, &ids)?)?;
        let updates: Vec<(String, Map<String, Value>)> =
            req.updates.into_iter().map(|u| (u.row_id, u.row)).collect();
        st::update_rows(t, &updates, &stamp, &mut RandomIds)
    })
    .await?;
    write(&state, who.base, statements).await?;
    Ok(Json(json!({ "success": true })))
}

#[derive(Deserialize)]
struct DeleteRows {
    #[serde(flatten)]
    table: TableRef,
    row_ids: Vec<String>,
}

/// `DELETE rows/`: deletes rows by id; every id must exist, or nothing
/// changes.
async fn delete_rows(
    State(state): State<Arc<AppState>>,
    Write(who, req): Write<DeleteRows>,
) -> StResult<Json<Value>> {
    let count = req.row_ids.len();
    let statements = read(&state, &who, move |meta, c| {
        let t = req.table.of(meta)?;
        missing(t, &req.row_ids, &st::existing_ids(c, t, &req.row_ids)?)?;
        st::delete_rows(t, &req.row_ids)
    })
    .await?;
    write(&state, who.base, statements).await?;
    Ok(Json(json!({ "success": true, "deleted_rows": count })))
}

#[derive(Deserialize)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    parameters: Option<Vec<Value>>,
    #[serde(default)]
    convert_keys: Option<bool>,
}

/// Whether a statement changes the schema, which the SQL call does not do.
fn changes_schema(sql: &str) -> bool {
    let first = shoal_storage::first_keyword(sql);
    ["create", "drop", "alter"].iter().any(|w| first.eq_ignore_ascii_case(w))
}

/// Whether a statement writes (and so goes through the log).
fn writes(sql: &str) -> bool {
    let first = shoal_storage::first_keyword(sql);
    ["insert", "update", "delete", "replace"].iter().any(|w| first.eq_ignore_ascii_case(w))
}

fn sql_error(e: Error) -> StError {
    match e {
        e @ (Error::NotLeader { .. }
        | Error::Unavailable(_)
        | Error::Timeout(_)
        | Error::Misdirected { .. }) => StError::Api(e),
        e => {
            let status = crate::error::status(&e);
            let m = message(&e);
            StError::Api(match status {
                s if s.is_server_error() => e,
                _ => Error::InvalidSql(m),
            })
        }
    }
}

/// `POST sql`: a read (results keyed by column name) or a write.
async fn sql(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    uuid: Result<ApiPath<String>, ApiError>,
    req: Result<ApiJson<SqlRequest>, ApiError>,
) -> Response {
    let uuid = match uuid {
        Ok(ApiPath(u)) => u,
        Err(e) => return StError::from(e).into_response(),
    };
    let req = match req {
        Ok(ApiJson(r)) => r,
        Err(e) => return sql_failure(e.into()),
    };
    if changes_schema(&req.sql) {
        return sql_failure(invalid(
            "the SQL call runs SELECT, INSERT, UPDATE and DELETE; add and delete tables and \
             columns with the tables/ and columns/ calls",
        ));
    }
    let write_sql = writes(&req.sql);
    let who = match caller(&state, &headers, &uuid, write_sql) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    match run_sql(&state, &who, req, write_sql).await {
        Ok(v) => Json(v).into_response(),
        Err(e @ StError::Forbidden(_)) => e.into_response(),
        Err(StError::Api(e)) if crate::error::status(&e).is_client_error() => {
            sql_failure(StError::Api(e))
        }
        Err(e) => e.into_response(),
    }
}

/// A failed SQL call: SeaTable's answer shape with `success: false`.
fn sql_failure(e: StError) -> Response {
    let (status, m) = match &e {
        StError::Api(e) => (crate::error::status(e), message(e)),
        StError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
    };
    (status, Json(json!({"success": false, "error_message": m, "error_msg": m, "results": [], "metadata": []})))
        .into_response()
}

async fn run_sql(
    state: &AppState,
    who: &Caller,
    req: SqlRequest,
    write_sql: bool,
) -> StResult<Value> {
    let params = Params::Positional(req.parameters.unwrap_or_default());
    if write_sql {
        // Checks the token like any call, then runs as the user's SQL.
        read(state, who, |_, _| Ok(())).await?;
        let statements = vec![Statement { sql: req.sql, params }];
        let command = Command::Execute { base: who.base, statements, transaction: true };
        let affected = match engine(state)?.write(command, None).await.map_err(sql_error)? {
            (_, Output::Executed { results }) => results.first().map_or(0, |r| r.rows_affected),
            (_, other) => {
                return Err(Error::Internal(format!("unexpected command output {other:?}")).into());
            }
        };
        return Ok(
            json!({"success": true, "results": [], "metadata": [], "affected_rows": affected}),
        );
    }
    let convert = req.convert_keys.unwrap_or(true);
    let (base, tid) = (who.base, who.tid.clone());
    let sql_text = req.sql.clone();
    // One read: the token check and the catalog (as Shoal), then the
    // user's statement (in the sandbox), its error kept apart.
    let (meta, result) = engine(state)?
        .read(base.bucket(), Consistency::default(), move |s| {
            let Some(meta) = s.read_system(&base, |c| st::load_for_token(c, &tid))? else {
                return Ok(None);
            };
            Ok(Some((meta, s.query(&base, &req.sql, &params))))
        })
        .await?
        .ok_or_else(revoked)?;
    let result = result.map_err(sql_error)?;
    // The SeaTable column each result column comes from, where one of the
    // tables the statement names has a column of that name.
    let lower = sql_text.to_lowercase();
    let named: Vec<&st::Table> =
        meta.tables.iter().filter(|t| lower.contains(&t.name.to_lowercase())).collect();
    let columns: Vec<Option<&st::Column>> = result
        .columns
        .iter()
        .map(|name| {
            named.iter().find_map(|t| t.columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)))
        })
        .collect();
    let metadata: Vec<Value> = result
        .columns
        .iter()
        .zip(&columns)
        .map(|(name, c)| match c {
            Some(c) => c.describe(),
            None => json!({"key": name, "name": name, "type": "text", "data": null}),
        })
        .collect();
    let results: Vec<Value> = result
        .rows
        .into_iter()
        .map(|row| {
            let mut m = Map::new();
            for ((name, c), v) in result.columns.iter().zip(&columns).zip(row) {
                let (key, v) = match c {
                    Some(c) => {
                        (if convert { name.clone() } else { c.key.clone() }, st::cell_out(c, v))
                    }
                    None => (name.clone(), v),
                };
                m.insert(key, v);
            }
            Value::Object(m)
        })
        .collect();
    Ok(json!({"success": true, "results": results, "metadata": metadata, "error_message": null}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_tokens_name_their_base_and_nothing_else_passes() {
        let base = BaseId::random();
        let token = new_api_token(base);
        assert_eq!(token.len(), 64);
        assert_eq!(token_base(&token), Some(base));
        assert_ne!(new_api_token(base), token);
        assert_eq!(token_base(&token[..63]), None);
        assert_eq!(token_base(&format!("{}x", &token[..63])), None);
        assert_eq!(token_hash(&token).len(), 64);
    }

    #[test]
    fn writes_are_told_from_reads() {
        assert!(writes("  INSERT INTO t VALUES (1)"));
        assert!(writes("update t set a = 1"));
        assert!(writes("DELETE FROM t"));
        assert!(!writes("select * from t"));
        assert!(!writes("WITH x AS (SELECT 1) SELECT * FROM x"));
        assert!(writes("-- a note\n/* and another */ INSERT INTO t VALUES (1)"));
        assert!(changes_schema("/* x */ DROP TABLE t"));
        assert!(!changes_schema("SELECT 1"));
    }
}
