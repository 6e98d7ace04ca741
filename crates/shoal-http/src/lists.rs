//! `GET /v1/bases` over the whole cluster. Each node holds the bases of its
//! buckets only, so a proxy, or a node that does not hold every bucket, asks
//! every live node for its page (marked forwarded, so that each answers from
//! its own replicas) and merges the pages into one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::http::{HeaderValue, header};
use shoal_types::api::{BaseInfo, BaseList};
use shoal_types::{BaseId, BucketId, Error, NodeId};

use shoal_registry::directory::Directory;

use crate::headers::FORWARDED;

/// How long one node's page may take.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a cluster-wide list has no answer.
pub enum ListFailure {
    /// A node refused the query (a 4xx): its answer is the answer.
    Refused(reqwest::Response),
    /// Not every bucket was heard from, or there is no map yet.
    Unavailable(Error),
}

/// Asks every live node of `dir` for `/v1/bases{query}` with `auth`, and
/// merges their pages into one of `limit` bases. Every bucket must have had
/// a replica answer, or the list would have a hole. Replicas may lag their
/// leader by a moment, so a base created or dropped just now can appear on
/// one node and not yet on another: the merge is a union.
pub async fn gather(
    http: &reqwest::Client,
    dir: &Directory,
    query: &str,
    auth: Option<&HeaderValue>,
    limit: usize,
) -> Result<BaseList, ListFailure> {
    let Some(map) = &dir.map else {
        return Err(ListFailure::Unavailable(Error::Unavailable(
            "the placement map has not been read yet; retry shortly".into(),
        )));
    };
    let nodes: Vec<(&NodeId, String)> = dir
        .nodes
        .iter()
        .map(|(id, info)| {
            (id, format!("{}/v1/bases{query}", info.local_node_url.trim_end_matches('/')))
        })
        .collect();
    let asks = nodes.iter().map(|(_, url)| {
        let mut r = http.get(url).header(FORWARDED, "1").timeout(ASK_TIMEOUT);
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        r.send()
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut pages: Vec<(NodeId, BaseList)> = Vec::new();
    for ((node, _), answer) in nodes.iter().zip(answers) {
        match answer {
            Ok(a) if a.status().is_client_error() => return Err(ListFailure::Refused(a)),
            Ok(a) if a.status().is_success() => match a.json::<BaseList>().await {
                Ok(page) => pages.push(((*node).clone(), page)),
                Err(e) => {
                    tracing::warn!(node = %node.0, error = %e, "a node's base list is unreadable")
                }
            },
            Ok(a) => {
                tracing::warn!(node = %node.0, status = %a.status(), "a node cannot list its bases")
            }
            Err(e) => tracing::warn!(node = %node.0, error = %e, "a node cannot list its bases"),
        }
    }
    let answered: BTreeSet<NodeId> = pages.iter().map(|(n, _)| n.clone()).collect();
    if let Some(b) = BucketId::all().find(|b| {
        !map.replicas(*b).is_empty() && !map.replicas(*b).iter().any(|n| answered.contains(n))
    }) {
        return Err(ListFailure::Unavailable(Error::Unavailable(format!(
            "no replica of bucket {b} answered; the list would be incomplete: retry shortly"
        ))));
    }
    Ok(merge(pages.into_iter().map(|(_, p)| p), limit))
}

/// One page out of the nodes' pages: the first `limit` distinct bases by id.
/// There are more when a node said so or when the union is longer.
pub fn merge(pages: impl IntoIterator<Item = BaseList>, limit: usize) -> BaseList {
    let mut all: BTreeMap<BaseId, BaseInfo> = BTreeMap::new();
    let mut more = false;
    for page in pages {
        more |= page.next_after.is_some();
        for b in page.bases {
            all.entry(b.id).or_insert(b);
        }
    }
    more |= all.len() > limit;
    let bases: Vec<BaseInfo> = all.into_values().take(limit).collect();
    let next_after = if more { bases.last().map(|b| b.id) } else { None };
    BaseList { bases, next_after }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> BaseInfo {
        let id: BaseId = id.parse().expect("id");
        BaseInfo { id, name: None, bucket: id.bucket(), created_at: String::new() }
    }

    const A: &str = "00000000-0000-4000-8000-000000000001";
    const B: &str = "10000000-0000-4000-8000-000000000002";
    const C: &str = "20000000-0000-4000-8000-000000000003";
    const D: &str = "30000000-0000-4000-8000-000000000004";

    #[test]
    fn pages_merge_in_id_order_without_duplicates() {
        let p1 = BaseList { bases: vec![info(A), info(C)], next_after: None };
        let p2 = BaseList { bases: vec![info(A), info(B)], next_after: None };
        let all = merge([p1.clone(), p2.clone()], 10);
        let ids: Vec<String> = all.bases.iter().map(|b| b.id.to_string()).collect();
        assert_eq!(ids, [A, B, C]);
        assert_eq!(all.next_after, None);
        // Cut at the limit: the rest is on the next page.
        let two = merge([p1, p2], 2);
        assert_eq!(two.bases.len(), 2);
        assert_eq!(two.next_after.map(|b| b.to_string()).as_deref(), Some(B));
        // A node with more makes the page not the last.
        let p3 = BaseList { bases: vec![info(D)], next_after: Some(info(D).id) };
        assert!(merge([p3], 5).next_after.is_some());
    }
}
