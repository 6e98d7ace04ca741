//! A Rust client for Shoal's HTTP API.
//!
//! Every call returns Shoal's own [`Error`], rebuilt from the server's
//! `{"error": {"code", "message"}}` answer, so callers match on variants,
//! never on messages. A server that cannot be reached is `Unavailable`.

pub mod watch;

use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_types::api::{
    BaseInfo, BaseList, ClusterStatus, CreateBaseRequest, ExecuteRequest, ExecuteResponse, Health,
    InsertRowsRequest, InsertRowsResponse, Params, QueryRequest, QueryResponse, RebalanceRequest,
    Row, RowList, Statement, TableList, UpdateRowRequest, WriteResponse,
};
use shoal_types::{BaseId, Error, ErrorBody, Result};

/// A connection to one Shoal endpoint.
#[derive(Clone, Debug)]
pub struct Client {
    endpoint: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// Which rows to list.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RowsQuery {
    /// Page size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Rows to skip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Column to order by (`_rowid` by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_by: Option<String>,
    /// Descending order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desc: Option<bool>,
}

impl Client {
    /// A client for `endpoint` (e.g. `http://127.0.0.1:7070`) with a bearer token.
    pub fn new(endpoint: &str, token: Option<String>) -> Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| Error::Internal(format!("cannot build HTTP client: {e}")))?;
        Ok(Client { endpoint: endpoint.trim_end_matches('/').to_string(), token, http })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.endpoint));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send<T: DeserializeOwned>(&self, r: RequestBuilder) -> Result<T> {
        let response = r.send().await.map_err(|e| self.transport(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport(e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Error::Internal(format!("unexpected answer from {}: {e}", self.endpoint))
            });
        }
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => body.into(),
            Err(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
                Error::TooLarge("request body too large".into())
            }
            Err(_) => Error::Internal(format!(
                "{} answered {status}: {}",
                self.endpoint,
                String::from_utf8_lossy(&bytes)
            )),
        })
    }

    fn transport(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout(format!("{} did not answer in time: {e}", self.endpoint))
        } else {
            Error::Unavailable(format!("cannot reach {}: {e}", self.endpoint))
        }
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<Health> {
        self.send(self.request(Method::GET, "/healthz")).await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        self.send(self.request(Method::GET, "/v1/cluster")).await
    }

    /// `POST /v1/cluster/rebalance`.
    pub async fn rebalance(&self) -> Result<RebalanceRequest> {
        self.send(self.request(Method::POST, "/v1/cluster/rebalance")).await
    }

    /// Creates a base.
    pub async fn create_base(&self, id: Option<BaseId>, name: Option<String>) -> Result<BaseInfo> {
        self.send(self.request(Method::POST, "/v1/bases").json(&CreateBaseRequest { id, name }))
            .await
    }

    /// Lists one page of bases.
    pub async fn list_bases(
        &self,
        limit: Option<usize>,
        after: Option<BaseId>,
    ) -> Result<BaseList> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(a) = after {
            q.push(("after", a.to_string()));
        }
        self.send(self.request(Method::GET, "/v1/bases").query(&q)).await
    }

    /// One base.
    pub async fn get_base(&self, id: BaseId) -> Result<BaseInfo> {
        self.send(self.request(Method::GET, &format!("/v1/bases/{id}"))).await
    }

    /// Drops a base.
    pub async fn drop_base(&self, id: BaseId) -> Result<WriteResponse> {
        self.send(self.request(Method::DELETE, &format!("/v1/bases/{id}"))).await
    }

    /// Runs write statements.
    pub async fn execute(
        &self,
        id: BaseId,
        statements: Vec<Statement>,
        transaction: bool,
    ) -> Result<ExecuteResponse> {
        self.send(
            self.request(Method::POST, &format!("/v1/bases/{id}/execute"))
                .json(&ExecuteRequest { statements, transaction }),
        )
        .await
    }

    /// Runs one read-only statement.
    pub async fn query(&self, id: BaseId, sql: &str, params: Params) -> Result<QueryResponse> {
        let req = QueryRequest { sql: sql.to_string(), params, consistency: Default::default() };
        self.send(self.request(Method::POST, &format!("/v1/bases/{id}/query")).json(&req)).await
    }

    /// The tables of a base.
    pub async fn tables(&self, id: BaseId) -> Result<TableList> {
        self.send(self.request(Method::GET, &format!("/v1/bases/{id}/tables"))).await
    }

    /// Inserts rows into a table.
    pub async fn insert_rows(
        &self,
        id: BaseId,
        table: &str,
        rows: Vec<Row>,
    ) -> Result<InsertRowsResponse> {
        self.send(
            self.request(Method::POST, &format!("/v1/bases/{id}/tables/{}/rows", segment(table)))
                .json(&InsertRowsRequest { rows }),
        )
        .await
    }

    /// Lists one page of rows.
    pub async fn list_rows(&self, id: BaseId, table: &str, q: &RowsQuery) -> Result<RowList> {
        self.send(
            self.request(Method::GET, &format!("/v1/bases/{id}/tables/{}/rows", segment(table)))
                .query(q),
        )
        .await
    }

    /// One row.
    pub async fn get_row(&self, id: BaseId, table: &str, rowid: i64) -> Result<Row> {
        self.send(self.request(
            Method::GET,
            &format!("/v1/bases/{id}/tables/{}/rows/{rowid}", segment(table)),
        ))
        .await
    }

    /// Changes columns of one row.
    pub async fn update_row(
        &self,
        id: BaseId,
        table: &str,
        rowid: i64,
        values: Row,
    ) -> Result<WriteResponse> {
        self.send(
            self.request(
                Method::PATCH,
                &format!("/v1/bases/{id}/tables/{}/rows/{rowid}", segment(table)),
            )
            .json(&UpdateRowRequest { values }),
        )
        .await
    }

    /// Deletes one row.
    pub async fn delete_row(&self, id: BaseId, table: &str, rowid: i64) -> Result<WriteResponse> {
        self.send(self.request(
            Method::DELETE,
            &format!("/v1/bases/{id}/tables/{}/rows/{rowid}", segment(table)),
        ))
        .await
    }
}

/// Percent-encodes a path segment (table names may hold any character).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("my table/x"), "my%20table%2Fx");
        assert_eq!(segment("t_1"), "t_1");
    }
}
