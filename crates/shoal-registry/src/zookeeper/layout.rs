//! How the contract's data sits in ZooKeeper: keys escaped into znode
//! names, znodes read back as key-values, and one consistent read of some
//! keys (see the parent module's docs).

use std::collections::BTreeMap;

use shoal_types::{LeaseId, Revision};
use zookeeper_client as zk;

use super::KV_DIR;
use crate::error::{Error, Result};
use crate::kv::KeyValue;

/// Escapes a key into one znode name (see the module docs).
pub(super) fn encode_key(key: &[u8]) -> Result<String> {
    if key.is_empty() {
        return Err(Error::InvalidInput("empty key".into()));
    }
    let mut name = String::with_capacity(key.len());
    for &b in key {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(name)
}

/// The key a znode name stands for, or `None` if it is not one of ours.
pub(super) fn decode_key(name: &str) -> Option<Vec<u8>> {
    let bytes = name.as_bytes();
    let mut key = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            key.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            key.push(bytes[i]);
            i += 1;
        }
    }
    Some(key)
}

pub(super) fn key_path(key: &[u8]) -> Result<String> {
    Ok(format!("{KV_DIR}/{}", encode_key(key)?))
}

/// A key read from ZooKeeper: the contract's view and the znode version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Znode {
    pub(super) kv: KeyValue,
    /// The znode's data version, for version checks.
    pub(super) version: i32,
}

pub(super) fn to_znode(key: Vec<u8>, data: Vec<u8>, stat: &zk::Stat) -> Znode {
    Znode {
        kv: KeyValue {
            key,
            value: data,
            create_revision: Revision(stat.czxid),
            mod_revision: Revision(stat.mzxid),
            version: i64::from(stat.version) + 1,
            lease: (stat.ephemeral_owner != 0).then_some(LeaseId(stat.ephemeral_owner)),
        },
        version: stat.version,
    }
}

/// One consistent read of some keys of the namespace.
#[derive(Clone, Debug, Default)]
pub(super) struct Snapshot {
    /// The keys read that exist.
    pub(super) keys: BTreeMap<Vec<u8>, Znode>,
    /// The namespace's revision at the read.
    pub(super) revision: i64,
    /// The key directory's `pzxid`: the last key creation or deletion.
    pub(super) pzxid: i64,
    /// The marker's data version, to guard on "nothing was created".
    pub(super) marker_version: i32,
}

impl Snapshot {
    pub(super) fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key).map(|z| &z.kv)
    }

    pub(super) fn under<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = &'a Znode> + 'a {
        self.keys
            .range(prefix.to_vec()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, z)| z)
    }
}

/// The keys among znode `names` under any of `prefixes`.
pub(super) fn matching<'a>(
    names: &'a [String],
    prefixes: &'a [Vec<u8>],
) -> impl Iterator<Item = Vec<u8>> + 'a {
    names
        .iter()
        .filter_map(|name| decode_key(name))
        .filter(|key| prefixes.iter().any(|p| key.starts_with(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_escape_to_one_znode_name_and_back() {
        for key in
            [&b"nodes/node-01"[..], b"a.b", b".", b"..", b"%", &[0, 0xff, b'/', 7], b"zookeeper"]
        {
            let name = encode_key(key).unwrap();
            assert!(!name.contains('/') && name != "." && name != "..", "{name}");
            assert_eq!(decode_key(&name).as_deref(), Some(key));
        }
        assert_eq!(encode_key(b"nodes/n_1").unwrap(), "nodes%2Fn_1");
        assert!(matches!(encode_key(b""), Err(Error::InvalidInput(_))));
        assert_eq!(decode_key("bad%4"), None);
    }
}
