//! Shoal's registry: the coordination store of the control plane.
//!
//! Node registrations, the placement map, the monitor election and every
//! watch on them go through one small contract, the [`Registry`] trait. It
//! is etcd's v3 model cut to what Shoal needs — key-values with a
//! cluster-wide revision, leases, compare-and-swap transactions, and watches
//! that never skip an event — so that the [`EtcdRegistry`] is a thin
//! translation and the in-process [`MemoryRegistry`] can reproduce it
//! exactly. The [`ZkRegistry`] maps it onto ZooKeeper (sessions, ephemeral
//! znodes, `multi`, zxids, persistent watches), with revisions that only
//! grow and watches without history. One conformance suite
//! (`testing::conformance`, behind the `testing` feature) runs against every
//! backend.
//!
//! On top of the trait, written once for all backends:
//! - [`Session`]: a lease kept alive in the background, with a signal when
//!   it is lost;
//! - [`Election`]: campaign, observe the leader, resign.
//!
//! Start-up goes through [`RegistryOptions`] (layered from `shoal.toml`,
//! `SHOAL_*` and flags by [`RegistryOptions::layer`]) and [`connect`].
//!
//! Key layout conventions (relative to the namespace) are documented in
//! `docs/registry.md`; the [`keys`] module builds them.

pub mod directory;
mod election;
pub mod embedded;
mod error;
mod etcd;
pub mod keys;
mod kv;
mod memory;
mod options;
mod registry;
mod session;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod zookeeper;

pub use election::{Election, Leader, leader, observe};
pub use embedded::{EmbeddedOptions, EmbeddedRegistry};
pub use error::{Error, Result};
pub use etcd::{EtcdOptions, EtcdRegistry, EtcdTls};
pub use kv::{
    Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, Listing, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchMessage,
};
pub use memory::{MemoryOptions, MemoryRegistry};
pub use options::{RegistryOptions, RegistryUrl, connect, connect_with};
pub use registry::{Registry, Watch};
pub use session::{Session, SessionOptions};
pub use shoal_types::{LeaseId, Revision};
pub use zookeeper::{ZkOptions, ZkRegistry};
