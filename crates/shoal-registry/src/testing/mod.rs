//! Test support, behind the `testing` feature: the conformance suite that
//! every backend must pass, and a harness that runs real etcd processes.

pub mod conformance;
pub mod etcd_server;
