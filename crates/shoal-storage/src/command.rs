//! The command model: every change to a bucket is a [`Command`] applied at a
//! log index. The bucket's Raft log hands out the indexes, and every replica
//! applies the same commands in the same order. A command therefore carries everything that must be equal on
//! every replica (the creation time is fixed by whoever proposes it).

use serde::{Deserialize, Serialize};
use shoal_types::BaseId;
use shoal_types::api::{BaseInfo, ExecuteResult, Statement};

/// A change to one bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Creates an empty base.
    CreateBase {
        /// Its id.
        id: BaseId,
        /// Its name.
        name: Option<String>,
        /// Its creation time, RFC 3339, fixed by the proposer.
        created_at: String,
    },
    /// Drops a base and its data.
    DropBase {
        /// Its id.
        id: BaseId,
    },
    /// Runs statements against a base.
    Execute {
        /// The base.
        base: BaseId,
        /// The statements, in order.
        statements: Vec<Statement>,
        /// All or nothing (true), or each statement on its own (false).
        transaction: bool,
    },
    /// Runs statements Shoal composed for a user (the SeaTable API, API
    /// tokens) against a base, all or nothing. Unlike [`Command::Execute`]
    /// they may change Shoal's own `_shoal_*` tables; never built from
    /// user SQL.
    System {
        /// The base.
        base: BaseId,
        /// The statements, in order.
        statements: Vec<Statement>,
    },
    /// Creates a base from a SQLite database file (checked by
    /// [`crate::image::check`] before it was proposed).
    Restore {
        /// Its id.
        id: BaseId,
        /// Its name.
        name: Option<String>,
        /// Its creation time, RFC 3339, fixed by the proposer.
        created_at: String,
        /// The file.
        image: Vec<u8>,
    },
}

impl Command {
    /// The base this command changes.
    pub fn base(&self) -> BaseId {
        match self {
            Command::CreateBase { id, .. }
            | Command::DropBase { id }
            | Command::Restore { id, .. } => *id,
            Command::Execute { base, .. } | Command::System { base, .. } => *base,
        }
    }
}

/// What applying a command produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Output {
    /// The base was created.
    Created {
        /// The new base.
        base: BaseInfo,
    },
    /// The base was dropped.
    Dropped,
    /// The statements ran; one result each.
    Executed {
        /// One result per statement.
        results: Vec<ExecuteResult>,
    },
    /// The command had been applied before (a replay): nothing changed.
    Replayed,
    /// The command's idempotency key was answered before: nothing changed,
    /// and this is the first answer.
    Repeated {
        /// The log index of the first write with the key.
        index: u64,
        /// Its output.
        output: Box<Output>,
    },
}

/// A command as proposed to a bucket's log, with the client's idempotency
/// key if it gave one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// The client's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The idempotency key of a write that must have been applied to the
    /// same base before this one: if it was not, the command fails
    /// (`conflict`) and changes nothing. A client with several writes in
    /// flight chains them this way so that they apply in the order it sent
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The command.
    pub command: Command,
}

/// The version byte that starts an encoded [`Proposal`] without `after`.
const PROPOSAL_VERSION: u8 = 1;

/// The version byte of a proposal with `after`: version 1's fields, then
/// `after`. Only such proposals carry it, so builds that read only version
/// 1 still read every other proposal.
const PROPOSAL_VERSION_AFTER: u8 = 2;

impl Proposal {
    /// The proposal as the log stores it: a version byte, then a compact
    /// binary encoding (postcard) of the command and its key (and `after`,
    /// in version 2). SQL values keep their JSON kinds (integers stay
    /// integers).
    pub fn encode(&self) -> Vec<u8> {
        let wire = wire::Proposal::from(self);
        match &self.after {
            None => postcard::to_extend(&wire, vec![PROPOSAL_VERSION]),
            Some(after) => postcard::to_extend(
                &wire::ProposalAfter { proposal: wire, after: after.as_str().into() },
                vec![PROPOSAL_VERSION_AFTER],
            ),
        }
        .expect("a proposal always encodes")
    }

    /// Reads a proposal written by [`Proposal::encode`]. An unknown version
    /// or unreadable bytes are an error (the same on every replica).
    pub fn decode(bytes: &[u8]) -> Result<Proposal, String> {
        let unreadable = |e: postcard::Error| format!("unreadable command: {e}");
        match bytes.split_first() {
            Some((&PROPOSAL_VERSION, rest)) => {
                postcard::from_bytes::<wire::Proposal>(rest).map(Proposal::from).map_err(unreadable)
            }
            Some((&PROPOSAL_VERSION_AFTER, rest)) => {
                postcard::from_bytes::<wire::ProposalAfter>(rest)
                    .map(|w| Proposal { after: Some(w.after.into_owned()), ..w.proposal.into() })
                    .map_err(unreadable)
            }
            Some((v, _)) => Err(format!("command format version {v} is unknown to this build")),
            None => Err("an empty command".into()),
        }
    }
}

/// The binary form of proposals: mirrors of the command types whose SQL
/// values are a tagged enum (JSON values need a self-describing format).
mod wire {
    use std::borrow::Cow;

    use serde::{Deserialize, Serialize};
    use serde_json::Value;
    use shoal_types::BaseId;
    use shoal_types::api::{Params, Statement};

    #[derive(Serialize, Deserialize)]
    pub(super) struct Proposal<'a> {
        key: Option<Cow<'a, str>>,
        command: Command<'a>,
    }

    /// Version 2: a proposal with `after`.
    #[derive(Serialize, Deserialize)]
    pub(super) struct ProposalAfter<'a> {
        #[serde(borrow)]
        pub(super) proposal: Proposal<'a>,
        pub(super) after: Cow<'a, str>,
    }

    #[derive(Serialize, Deserialize)]
    enum Command<'a> {
        CreateBase {
            id: [u8; 16],
            name: Option<Cow<'a, str>>,
            created_at: Cow<'a, str>,
        },
        DropBase {
            id: [u8; 16],
        },
        Execute {
            base: [u8; 16],
            transaction: bool,
            statements: Vec<Stmt<'a>>,
        },
        // Added after the first release: variants only ever go at the end.
        System {
            base: [u8; 16],
            statements: Vec<Stmt<'a>>,
        },
        Restore {
            id: [u8; 16],
            name: Option<Cow<'a, str>>,
            created_at: Cow<'a, str>,
            image: Cow<'a, [u8]>,
        },
    }

    fn stmts(statements: &[Statement]) -> Vec<Stmt<'_>> {
        statements
            .iter()
            .map(|s| Stmt {
                sql: Cow::Borrowed(&s.sql),
                params: match &s.params {
                    Params::Positional(v) => Args::Positional(v.iter().map(Val::from).collect()),
                    Params::Named(m) => {
                        Args::Named(m.iter().map(|(k, v)| (k.clone(), v.into())).collect())
                    }
                },
            })
            .collect()
    }

    fn unstmts(stmts: Vec<Stmt<'_>>) -> Vec<Statement> {
        stmts
            .into_iter()
            .map(|s| Statement {
                sql: s.sql.into_owned(),
                params: match s.params {
                    Args::Positional(v) => {
                        Params::Positional(v.into_iter().map(Value::from).collect())
                    }
                    Args::Named(m) => {
                        Params::Named(m.into_iter().map(|(k, v)| (k, v.into())).collect())
                    }
                },
            })
            .collect()
    }

    #[derive(Serialize, Deserialize)]
    struct Stmt<'a> {
        sql: Cow<'a, str>,
        params: Args,
    }

    #[derive(Serialize, Deserialize)]
    enum Args {
        Positional(Vec<Val>),
        Named(Vec<(String, Val)>),
    }

    #[derive(Serialize, Deserialize)]
    enum Val {
        Null,
        Bool(bool),
        Int(i64),
        UInt(u64),
        Float(f64),
        Text(String),
        Array(Vec<Val>),
        Object(Vec<(String, Val)>),
    }

    impl From<&Value> for Val {
        fn from(v: &Value) -> Val {
            match v {
                Value::Null => Val::Null,
                Value::Bool(b) => Val::Bool(*b),
                Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => Val::Int(i),
                    (None, Some(u)) => Val::UInt(u),
                    _ => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
                Value::String(s) => Val::Text(s.clone()),
                Value::Array(a) => Val::Array(a.iter().map(Val::from).collect()),
                Value::Object(o) => {
                    Val::Object(o.iter().map(|(k, v)| (k.clone(), v.into())).collect())
                }
            }
        }
    }

    impl From<Val> for Value {
        fn from(v: Val) -> Value {
            match v {
                Val::Null => Value::Null,
                Val::Bool(b) => Value::Bool(b),
                Val::Int(i) => Value::from(i),
                Val::UInt(u) => Value::from(u),
                Val::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
                Val::Text(s) => Value::String(s),
                Val::Array(a) => Value::Array(a.into_iter().map(Value::from).collect()),
                Val::Object(o) => {
                    Value::Object(o.into_iter().map(|(k, v)| (k, v.into())).collect())
                }
            }
        }
    }

    impl<'a> From<&'a super::Proposal> for Proposal<'a> {
        fn from(p: &'a super::Proposal) -> Proposal<'a> {
            let command = match &p.command {
                super::Command::CreateBase { id, name, created_at } => Command::CreateBase {
                    id: *id.0.as_bytes(),
                    name: name.as_deref().map(Cow::Borrowed),
                    created_at: Cow::Borrowed(created_at),
                },
                super::Command::DropBase { id } => Command::DropBase { id: *id.0.as_bytes() },
                super::Command::Execute { base, statements, transaction } => Command::Execute {
                    base: *base.0.as_bytes(),
                    transaction: *transaction,
                    statements: stmts(statements),
                },
                super::Command::System { base, statements } => {
                    Command::System { base: *base.0.as_bytes(), statements: stmts(statements) }
                }
                super::Command::Restore { id, name, created_at, image } => Command::Restore {
                    id: *id.0.as_bytes(),
                    name: name.as_deref().map(Cow::Borrowed),
                    created_at: Cow::Borrowed(created_at),
                    image: Cow::Borrowed(image),
                },
            };
            Proposal { key: p.key.as_deref().map(Cow::Borrowed), command }
        }
    }

    fn id(bytes: [u8; 16]) -> BaseId {
        BaseId(uuid::Uuid::from_bytes(bytes))
    }

    impl From<Proposal<'_>> for super::Proposal {
        fn from(p: Proposal<'_>) -> super::Proposal {
            let command = match p.command {
                Command::CreateBase { id: i, name, created_at } => super::Command::CreateBase {
                    id: id(i),
                    name: name.map(Cow::into_owned),
                    created_at: created_at.into_owned(),
                },
                Command::DropBase { id: i } => super::Command::DropBase { id: id(i) },
                Command::Execute { base, transaction, statements } => super::Command::Execute {
                    base: id(base),
                    transaction,
                    statements: unstmts(statements),
                },
                Command::System { base, statements } => {
                    super::Command::System { base: id(base), statements: unstmts(statements) }
                }
                Command::Restore { id: i, name, created_at, image } => super::Command::Restore {
                    id: id(i),
                    name: name.map(Cow::into_owned),
                    created_at: created_at.into_owned(),
                    image: image.into_owned(),
                },
            };
            super::Proposal { key: p.key.map(Cow::into_owned), after: None, command }
        }
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;
    use shoal_types::api::Params;

    #[test]
    fn proposals_round_trip_in_binary_and_refuse_unknown_versions() {
        let statements = vec![
            Statement {
                sql: "INSERT INTO t VALUES (?, ?, ?, ?, ?)".into(),
                params: Params::Positional(vec![
                    serde_json::json!(-5),
                    serde_json::json!(u64::MAX),
                    serde_json::json!(1.5),
                    serde_json::json!("text"),
                    serde_json::json!({"base64": "AAE="}),
                ]),
            },
            Statement {
                sql: "UPDATE t SET a = :a".into(),
                params: Params::Named([("a".to_string(), serde_json::json!(null))].into()),
            },
        ];
        let p = Proposal {
            key: Some("k-1".into()),
            after: None,
            command: Command::Execute { base: BaseId::random(), statements, transaction: true },
        };
        let bytes = p.encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(Proposal::decode(&bytes).expect("decode"), p);
        let json = serde_json::to_vec(&p).expect("json");
        assert!(bytes.len() < json.len(), "{} bytes against JSON's {}", bytes.len(), json.len());
        let create = Proposal {
            key: None,
            after: None,
            command: Command::CreateBase {
                id: BaseId::random(),
                name: None,
                created_at: "2026-01-01T00:00:00Z".into(),
            },
        };
        assert_eq!(Proposal::decode(&create.encode()).expect("decode"), create);
        // With `after`: version 2, and back.
        let chained = Proposal { after: Some("k-0".into()), ..p.clone() };
        let v2 = chained.encode();
        assert_eq!(v2[0], 2);
        assert_eq!(Proposal::decode(&v2).expect("decode"), chained);
        let mut future = bytes.clone();
        future[0] = 3;
        assert!(Proposal::decode(&future).expect_err("v3").contains("version 3"));
        assert!(Proposal::decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(Proposal::decode(&[]).is_err());
    }
}
