//! raft-rs logs through `slog`; this drain hands its records to `tracing`
//! under the target `raft`, with their key-value pairs in the message.
//! raft-rs's `info` lines (every election, every configuration change, for
//! hundreds of groups) become `debug` events; warnings and errors stay.

use std::fmt::Write as _;

use slog::{Drain, KV, Level, OwnedKVList, Record, Serializer};

/// The drain.
pub struct TracingDrain;

struct Line(String);

impl Serializer for Line {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            Level::Critical | Level::Error => tracing::Level::ERROR,
            Level::Warning => tracing::Level::WARN,
            Level::Info | Level::Debug => tracing::Level::DEBUG,
            Level::Trace => tracing::Level::TRACE,
        };
        // Formatting costs: skip records nobody listens to.
        let enabled = match level {
            tracing::Level::ERROR => tracing::enabled!(target: "raft", tracing::Level::ERROR),
            tracing::Level::WARN => tracing::enabled!(target: "raft", tracing::Level::WARN),
            tracing::Level::DEBUG => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            _ => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut line = Line(record.msg().to_string());
        let _ = record.kv().serialize(record, &mut line);
        let _ = values.serialize(record, &mut line);
        let text = line.0;
        match level {
            tracing::Level::ERROR => tracing::error!(target: "raft", "{text}"),
            tracing::Level::WARN => tracing::warn!(target: "raft", "{text}"),
            tracing::Level::DEBUG => tracing::debug!(target: "raft", "{text}"),
            _ => tracing::trace!(target: "raft", "{text}"),
        }
        Ok(())
    }
}

/// The logger of one group.
pub fn for_group(group: u8) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("group" => format!("{group:02x}")))
}
