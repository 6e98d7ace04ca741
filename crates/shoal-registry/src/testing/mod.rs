//! Test support, behind the `testing` feature: the conformance suite that
//! every backend must pass, and harnesses that run real etcd and ZooKeeper
//! processes.

pub mod conformance;
pub mod etcd_server;
pub mod zookeeper_server;
