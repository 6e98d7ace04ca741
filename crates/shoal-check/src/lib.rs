//! Linearizability checking of register histories.
//!
//! A history is what clients saw: operations on keys, each with the client
//! (process) that ran it, when it was invoked, when it completed, and how
//! it ended. Every key is a register that starts absent and supports
//! [`Op::Read`], [`Op::Write`] and compare-and-set ([`Op::Cas`]). The
//! history is linearizable if every key's operations can be put in one
//! order that respects real time (an operation that completed before
//! another was invoked comes first) and in which every answer is what the
//! register would have answered at that point.
//!
//! Outcomes:
//! - [`Outcome::Ok`]: the answer is known and the operation took effect
//!   exactly once between its invocation and its completion;
//! - [`Outcome::Failed`]: it certainly did not happen (it is left out);
//! - [`Outcome::Unknown`]: it may have taken effect, at any time after its
//!   invocation (even after the history ends), or never. Its completion
//!   time is ignored.
//!
//! Keys are independent registers, so each key is checked on its own. The
//! search is the Wing–Gong algorithm with Lowe's memoization: a
//! depth-first search over which pending operation takes effect next,
//! considering only operations invoked before the earliest completion not
//! yet explained, and remembering every (set of operations taken, register
//! state) pair already explored so that no configuration is searched
//! twice. An unknown operation's completion lies at the end of time, so it
//! may be taken anywhere after its invocation, or never.
//!
//! Unknown writes whose value no successful read or compare-and-set ever
//! observed are first left out (taking them can only change the state to a
//! value nobody saw); a history linearizable without them is linearizable
//! with them. Only if that first search fails is the full history searched.
//!
//! The search is bounded ([`Options::budget`]): a key whose search takes
//! more steps is reported [`Verdict::Undecided`] rather than searched
//! forever.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::time::Duration;

/// A register value.
pub type Value = i64;

/// What a register holds: `None` while the key was never written.
pub type State = Option<Value>;

/// An operation on one key's register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A read; `seen` is what it returned (meaningful only when it
    /// succeeded).
    Read {
        /// The value returned (`None`: the key was absent).
        seen: State,
    },
    /// Sets the register to `value`.
    Write {
        /// The value written.
        value: Value,
    },
    /// Sets the register to `to` if it holds `from`; `swapped` is the
    /// answer (meaningful only when the operation succeeded).
    Cas {
        /// The value expected.
        from: Value,
        /// The value set when the register held `from`.
        to: Value,
        /// Whether it set the register.
        swapped: bool,
    },
}

impl Op {
    /// The value this operation may write.
    pub fn writes(&self) -> Option<Value> {
        match *self {
            Op::Read { .. } => None,
            Op::Write { value } => Some(value),
            Op::Cas { to, .. } => Some(to),
        }
    }

    /// Whether this operation, ended with `outcome`, certainly changed the
    /// register (an acknowledged write or a compare-and-set that swapped).
    pub fn is_acknowledged_effect(&self, outcome: Outcome) -> bool {
        outcome == Outcome::Ok
            && match *self {
                Op::Read { .. } => false,
                Op::Write { .. } => true,
                Op::Cas { swapped, .. } => swapped,
            }
    }
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// It took effect once, between invocation and completion.
    Ok,
    /// It certainly did not take effect.
    Failed,
    /// It may have taken effect, at any time after its invocation, or never.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that ran it (only reported, never used by the search).
    pub process: u64,
    /// The register it acts on.
    pub key: String,
    /// When it was invoked (from any fixed origin, monotonic).
    pub invoked: Duration,
    /// When its answer arrived; required for [`Outcome::Ok`], ignored for
    /// [`Outcome::Unknown`].
    pub completed: Option<Duration>,
    /// What it did.
    pub op: Op,
    /// How it ended.
    pub outcome: Outcome,
}

fn show_state(s: State) -> String {
    match s {
        Some(v) => v.to_string(),
        None => "absent".into(),
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ok = self.outcome == Outcome::Ok;
        let what = match self.op {
            Op::Read { seen } if ok => format!("read -> {}", show_state(seen)),
            Op::Read { .. } => "read".to_string(),
            Op::Write { value } => format!("write {value}"),
            Op::Cas { from, to, swapped } if ok => {
                format!("cas {from}->{to} -> {}", if swapped { "swapped" } else { "not swapped" })
            }
            Op::Cas { from, to, .. } => format!("cas {from}->{to}"),
        };
        let end = match (self.outcome, self.completed) {
            (Outcome::Unknown, _) | (_, None) => "?".to_string(),
            (_, Some(c)) => format!("{:.4}s", c.as_secs_f64()),
        };
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        write!(
            f,
            "p{} {} {what} [{:.4}s, {end}] {outcome}",
            self.process,
            self.key,
            self.invoked.as_secs_f64()
        )
    }
}

/// Settings of a check.
#[derive(Clone, Debug)]
pub struct Options {
    /// At most this many search steps per key; past it the key is
    /// [`Verdict::Undecided`].
    pub budget: u64,
    /// What every register holds before the history.
    pub initial: State,
}

impl Default for Options {
    fn default() -> Self {
        Options { budget: 5_000_000, initial: None }
    }
}

/// A history the checker cannot take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidHistory {
    /// The index of the offending operation.
    pub index: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for InvalidHistory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation #{}: {}", self.index, self.reason)
    }
}

impl std::error::Error for InvalidHistory {}

/// The verdict on one key.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// The key's operations can be linearized.
    Linearizable,
    /// They cannot; the violation says where the search got stuck.
    NotLinearizable(Box<Violation>),
    /// The search ran out of budget: neither proven nor refuted.
    Undecided,
}

/// Where a key's history cannot be linearized: no order of its operations
/// gets past the completion of `op`.
#[derive(Clone, Debug)]
pub struct Violation {
    /// The key.
    pub key: String,
    /// The operation (history index and copy) whose completion no
    /// linearization of the history before it reaches.
    pub op: (usize, Operation),
    /// What the register could hold when `op` had to have taken effect
    /// (the states of every search branch that got that far).
    pub states: Vec<State>,
    /// The operations concurrent with `op` (invoked before it completed and
    /// not completed before it was invoked), in invocation order.
    pub concurrent: Vec<(usize, Operation)>,
    /// The operations the furthest attempt took last before getting stuck,
    /// oldest first.
    pub before: Vec<(usize, Operation)>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {}: not linearizable", self.key)?;
        writeln!(f, "  no order of the operations reaches the completion of")?;
        writeln!(f, "    #{} {}", self.op.0, self.op.1)?;
        let states: Vec<String> = self.states.iter().map(|s| show_state(*s)).collect();
        writeln!(
            f,
            "  when it had to take effect, the register could only hold: {}",
            states.join(", ")
        )?;
        if !self.concurrent.is_empty() {
            writeln!(f, "  operations concurrent with it:")?;
            for (i, o) in &self.concurrent {
                writeln!(f, "    #{i} {o}")?;
            }
        }
        if !self.before.is_empty() {
            writeln!(f, "  the furthest attempt took last, in this order:")?;
            for (i, o) in &self.before {
                writeln!(f, "    #{i} {o}")?;
            }
        }
        Ok(())
    }
}

/// The result for one key.
#[derive(Clone, Debug)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// Operations that took part in the check (failed ones and reads of
    /// unknown outcome are left out).
    pub ops: usize,
    /// Unknown operations left out of the first search (their value was
    /// never observed).
    pub pruned: usize,
    /// Search steps taken.
    pub steps: u64,
    /// The verdict.
    pub verdict: Verdict,
    /// When linearizable: one linearization, as history indices in order
    /// (unknown operations that need not have happened are absent).
    pub order: Vec<usize>,
}

/// The result of a check, key by key (in key order).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// One entry per key.
    pub keys: Vec<KeyReport>,
}

impl Report {
    /// Keys that cannot be linearized.
    pub fn violations(&self) -> Vec<&Violation> {
        self.keys
            .iter()
            .filter_map(|k| match &k.verdict {
                Verdict::NotLinearizable(v) => Some(&**v),
                _ => None,
            })
            .collect()
    }

    /// Keys whose search ran out of budget.
    pub fn undecided(&self) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::Undecided))
            .map(|k| k.key.as_str())
            .collect()
    }

    /// Every key was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys.iter().all(|k| matches!(k.verdict, Verdict::Linearizable))
    }

    /// The witness order of `key`, if it was proven linearizable.
    pub fn order(&self, key: &str) -> Option<&[usize]> {
        self.keys
            .iter()
            .find(|k| k.key == key && matches!(k.verdict, Verdict::Linearizable))
            .map(|k| k.order.as_slice())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for k in &self.keys {
            let verdict = match &k.verdict {
                Verdict::Linearizable => "linearizable".to_string(),
                Verdict::NotLinearizable(_) => "NOT linearizable".to_string(),
                Verdict::Undecided => "unknown (budget exceeded)".to_string(),
            };
            writeln!(
                f,
                "key {}: {} operations ({} unobserved unknown left out first), {} steps: {verdict}",
                k.key, k.ops, k.pruned, k.steps
            )?;
        }
        for v in self.violations() {
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// The register: what `op` does in `state`, or `None` if it cannot happen
/// there. An unknown compare-and-set has no answer to match: it swaps if
/// it can.
fn step(state: State, op: Op, unknown: bool) -> Option<State> {
    match op {
        Op::Read { seen } => (state == seen).then_some(state),
        Op::Write { value } => Some(Some(value)),
        Op::Cas { from, to, swapped } => {
            let matches = state == Some(from);
            if unknown {
                Some(if matches { Some(to) } else { state })
            } else if swapped {
                matches.then_some(Some(to))
            } else {
                (!matches).then_some(state)
            }
        }
    }
}

/// Checks every key of `history` on its own.
pub fn check(history: &[Operation], options: &Options) -> Result<Report, InvalidHistory> {
    for (index, o) in history.iter().enumerate() {
        let invalid = |reason: &str| InvalidHistory { index, reason: reason.to_string() };
        match (o.outcome, o.completed) {
            (Outcome::Ok, None) => return Err(invalid("succeeded without a completion time")),
            (Outcome::Ok | Outcome::Failed, Some(c)) if c < o.invoked => {
                return Err(invalid("completed before it was invoked"));
            }
            _ => {}
        }
    }
    let keys: BTreeSet<&str> = history.iter().map(|o| o.key.as_str()).collect();
    let keys = keys.into_iter().map(|k| check_key(history, k, options)).collect();
    Ok(Report { keys })
}

fn check_key(history: &[Operation], key: &str, options: &Options) -> KeyReport {
    // Failed operations did not happen; a read of unknown outcome changed
    // nothing and answered nothing.
    let all: Vec<usize> = (0..history.len())
        .filter(|&i| {
            let o = &history[i];
            o.key == key
                && o.outcome != Outcome::Failed
                && !(o.outcome == Outcome::Unknown && matches!(o.op, Op::Read { .. }))
        })
        .collect();
    let observed: HashSet<Value> = all
        .iter()
        .filter_map(|&i| {
            let o = &history[i];
            match (o.outcome, o.op) {
                (Outcome::Ok, Op::Read { seen }) => seen,
                (Outcome::Ok, Op::Cas { from, swapped: true, .. }) => Some(from),
                _ => None,
            }
        })
        .collect();
    let kept: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| {
            let o = &history[i];
            o.outcome == Outcome::Ok || o.op.writes().is_some_and(|v| observed.contains(&v))
        })
        .collect();
    let mut report = KeyReport {
        key: key.to_string(),
        ops: all.len(),
        pruned: all.len() - kept.len(),
        steps: 0,
        verdict: Verdict::Undecided,
        order: Vec::new(),
    };
    let first = search(history, &kept, options.initial, options.budget);
    report.steps = first.steps;
    let result = match first.end {
        End::Fail { .. } if kept.len() < all.len() => {
            let full =
                search(history, &all, options.initial, options.budget.saturating_sub(first.steps));
            report.steps += full.steps;
            match full.end {
                End::Budget => first.end,
                _ => full.end,
            }
        }
        end => end,
    };
    report.verdict = match result {
        End::Linearized(order) => {
            report.order = order;
            Verdict::Linearizable
        }
        End::Budget => Verdict::Undecided,
        End::Fail { blocked, states, before } => {
            let o = &history[blocked];
            let (start, end) = (o.invoked, o.completed.unwrap_or(Duration::MAX));
            let concurrent = all
                .iter()
                .filter(|&&i| i != blocked)
                .filter(|&&i| {
                    let c = &history[i];
                    let c_end = match c.outcome {
                        Outcome::Unknown => Duration::MAX,
                        _ => c.completed.unwrap_or(Duration::MAX),
                    };
                    c.invoked <= end && c_end >= start
                })
                .map(|&i| (i, history[i].clone()))
                .collect();
            Verdict::NotLinearizable(Box::new(Violation {
                key: key.to_string(),
                op: (blocked, o.clone()),
                states,
                concurrent,
                before: before.into_iter().map(|i| (i, history[i].clone())).collect(),
            }))
        }
    };
    report
}

/// How a search ended.
enum End {
    /// A linearization (history indices in order).
    Linearized(Vec<usize>),
    /// None exists; the furthest the search got.
    Fail {
        /// History index of the operation whose completion no branch passed.
        blocked: usize,
        /// Register states of the branches stuck there.
        states: Vec<State>,
        /// History indices of the last operations the first such branch took.
        before: Vec<usize>,
    },
    /// Out of budget.
    Budget,
}

struct Search {
    end: End,
    steps: u64,
}

const NONE: usize = usize::MAX;
/// How many register states a violation lists at most.
const MAX_STATES: usize = 16;
/// How many operations taken before the stuck point a violation lists.
const BEFORE: usize = 6;

/// The set of operations taken so far: one bitset for the operations with
/// a known answer (numbered in invocation order) and one for the unknown
/// ones. The memo key keeps only the part of the first past its longest
/// all-taken prefix, so it stays small however long the history.
struct Taken {
    bits: Vec<u64>,
    unknown: Vec<u64>,
}

impl Taken {
    fn flip(set: &mut [u64], i: usize) {
        set[i / 64] ^= 1 << (i % 64);
    }

    fn memo_key(&self, state: State) -> (Box<[u64]>, State) {
        let full = self.bits.iter().position(|w| *w != u64::MAX).unwrap_or(self.bits.len());
        let last = self.bits.iter().rposition(|w| *w != 0).map_or(0, |i| i + 1).max(full);
        let mut key = Vec::with_capacity(2 + last - full + self.unknown.len());
        key.push(full as u64);
        key.push((last - full) as u64);
        key.extend_from_slice(&self.bits[full..last]);
        key.extend_from_slice(&self.unknown);
        (key.into_boxed_slice(), state)
    }
}

/// The Wing–Gong–Lowe search over the operations `ops` (history indices,
/// all on one key).
fn search(history: &[Operation], ops: &[usize], initial: State, budget: u64) -> Search {
    let mut ops = ops.to_vec();
    ops.sort_by_key(|&i| (history[i].invoked, i));
    let n = ops.len();
    let unknown: Vec<bool> = ops.iter().map(|&i| history[i].outcome == Outcome::Unknown).collect();
    // Each operation's bit in its bitset.
    let mut bit = vec![0; n];
    let (mut known_count, mut unknown_count) = (0usize, 0usize);
    for (o, b) in bit.iter_mut().enumerate() {
        if unknown[o] {
            *b = unknown_count;
            unknown_count += 1;
        } else {
            *b = known_count;
            known_count += 1;
        }
    }
    // Call and return events in time order; at equal times calls come
    // first (the operations overlap). Unknown operations return at the end
    // of time.
    let mut events: Vec<(Duration, bool, usize)> = Vec::with_capacity(2 * n);
    for (o, &i) in ops.iter().enumerate() {
        let h = &history[i];
        events.push((h.invoked, false, o));
        let end = if unknown[o] { Duration::MAX } else { h.completed.unwrap_or(Duration::MAX) };
        events.push((end, true, o));
    }
    events.sort();
    let m = events.len();
    let head = m;
    let is_call: Vec<bool> = events.iter().map(|e| !e.1).collect();
    let op_of: Vec<usize> = events.iter().map(|e| e.2).collect();
    let mut ret_of = vec![0; n];
    for (e, ev) in events.iter().enumerate() {
        if ev.1 {
            ret_of[ev.2] = e;
        }
    }
    let mut next: Vec<usize> = (1..=m).map(|e| if e == m { NONE } else { e }).collect();
    next.push(if m == 0 { NONE } else { 0 });
    let mut prev: Vec<usize> = (0..m).map(|e| if e == 0 { head } else { e - 1 }).collect();
    prev.push(NONE);

    fn unlink(next: &mut [usize], prev: &mut [usize], x: usize) {
        let (p, nx) = (prev[x], next[x]);
        next[p] = nx;
        if nx != NONE {
            prev[nx] = p;
        }
    }
    fn relink(next: &mut [usize], prev: &mut [usize], x: usize) {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        if nx != NONE {
            prev[nx] = x;
        }
    }

    let mut taken = Taken {
        bits: vec![0; known_count.div_ceil(64)],
        unknown: vec![0; unknown_count.div_ceil(64)],
    };
    let flip = |taken: &mut Taken, o: usize| {
        if unknown[o] {
            Taken::flip(&mut taken.unknown, bit[o]);
        } else {
            Taken::flip(&mut taken.bits, bit[o]);
        }
    };
    let mut memo: HashSet<(Box<[u64]>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state = initial;
    let mut entry = next[head];
    let mut steps = 0u64;
    // The furthest stuck point: (event position, op, states, before).
    let mut furthest: Option<(usize, usize, BTreeSet<State>, Vec<usize>)> = None;
    loop {
        steps += 1;
        if steps > budget {
            return Search { end: End::Budget, steps };
        }
        if entry == NONE || (!is_call[entry] && unknown[op_of[entry]]) {
            // Every operation with a known answer is taken.
            let order = stack.iter().map(|&(e, _)| ops[op_of[e]]).collect();
            return Search { end: End::Linearized(order), steps };
        }
        if is_call[entry] {
            let o = op_of[entry];
            let h = &history[ops[o]];
            if let Some(new_state) = step(state, h.op, unknown[o]) {
                flip(&mut taken, o);
                if memo.insert(taken.memo_key(new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    unlink(&mut next, &mut prev, entry);
                    unlink(&mut next, &mut prev, ret_of[o]);
                    entry = next[head];
                    continue;
                }
                flip(&mut taken, o);
            }
            entry = next[entry];
        } else {
            // The earliest pending completion: its operation was not taken.
            match &mut furthest {
                Some((at, _, states, _)) if *at == entry => {
                    if states.len() < MAX_STATES {
                        states.insert(state);
                    }
                }
                Some((at, ..)) if *at > entry => {}
                _ => {
                    let before = stack
                        .iter()
                        .skip(stack.len().saturating_sub(BEFORE))
                        .map(|&(e, _)| ops[op_of[e]])
                        .collect();
                    furthest = Some((entry, op_of[entry], BTreeSet::from([state]), before));
                }
            }
            let Some((e, s)) = stack.pop() else {
                let (_, o, states, before) = furthest.expect("stuck somewhere");
                let end =
                    End::Fail { blocked: ops[o], states: states.into_iter().collect(), before };
                return Search { end, steps };
            };
            let o = op_of[e];
            relink(&mut next, &mut prev, ret_of[o]);
            relink(&mut next, &mut prev, e);
            flip(&mut taken, o);
            state = s;
            entry = next[e];
        }
    }
}

/// What the final read of a key says about the acknowledged writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalCheck {
    /// Acknowledged effects (history indices) that the final value shows
    /// were lost: each came, in real time, after every operation that could
    /// have written the final value.
    pub lost: Vec<usize>,
    /// The final value is one no operation could have written.
    pub never_written: bool,
}

/// Checks directly, without a search, that `final_state` (read after every
/// operation on `key` had ended) is consistent with the acknowledged
/// effects of `history`: it must come from an operation that may have
/// happened, and no acknowledged write or swap may have come entirely
/// after every operation that could have written it.
pub fn check_final(
    history: &[Operation],
    key: &str,
    final_state: State,
    initial: State,
) -> FinalCheck {
    let on_key = || history.iter().enumerate().filter(|(_, o)| o.key == key);
    // When each possible writer of the final value completed (`None`: may
    // be arbitrarily late); the initial state was there before everything.
    const INITIAL: usize = usize::MAX;
    let mut writers: Vec<(usize, Option<Duration>)> = on_key()
        .filter(|(_, o)| o.outcome != Outcome::Failed && o.op.writes().is_some())
        .filter(|(_, o)| o.op.writes() == final_state)
        .filter(|(_, o)| {
            !matches!(o.op, Op::Cas { swapped: false, .. }) || o.outcome != Outcome::Ok
        })
        .map(|(i, o)| (i, if o.outcome == Outcome::Ok { o.completed } else { None }))
        .collect();
    if final_state == initial {
        writers.push((INITIAL, None));
    }
    if writers.is_empty() {
        return FinalCheck { lost: Vec::new(), never_written: true };
    }
    let lost = on_key()
        .filter(|(i, o)| {
            o.op.is_acknowledged_effect(o.outcome) && !writers.iter().any(|w| w.0 == *i)
        })
        .filter(|(_, o)| {
            writers.iter().all(|&(w, done)| w == INITIAL || done.is_some_and(|d| d < o.invoked))
        })
        .map(|(i, _)| i)
        .collect();
    FinalCheck { lost, never_written: false }
}

/// How stale a read that did not go through the linearizable path was,
/// measured against one linearization of the key's other operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadAge {
    /// It could have been a linearizable read.
    Fresh,
    /// It returned a value already overwritten before it was invoked.
    Stale {
        /// How many changes of the register it missed.
        versions: usize,
        /// How long before its invocation the value it returned was known
        /// to be overwritten (an operation that saw or made a newer value
        /// had completed).
        behind: Duration,
    },
    /// It returned a value the linearization makes only after it completed,
    /// or never: it cannot be placed at all.
    Unexplained,
}

/// Places `read` (an [`Op::Read`] that succeeded, not part of the history
/// checked) against `order`, a linearization of its key's operations as
/// returned in [`KeyReport::order`]. To place many reads, build
/// [`Versions`] once.
pub fn read_age(
    history: &[Operation],
    order: &[usize],
    read: &Operation,
    initial: State,
) -> ReadAge {
    Versions::new(history, order, initial).age(read)
}

/// The versions a register went through along one linearization of its
/// key, indexed to place reads quickly.
pub struct Versions {
    /// Version k held `values[k]`; version 0 is the initial state.
    values: Vec<State>,
    /// The versions that held each state, ascending.
    of_state: std::collections::HashMap<State, Vec<usize>>,
    /// (invocation, version it left) of every operation, by invocation,
    /// with the running maximum of the version.
    by_invocation: Vec<(Duration, usize)>,
    /// (completion, version it left) of every acknowledged operation, by
    /// completion, with the running maximum of the version.
    by_completion: Vec<(Duration, usize)>,
    /// For each version k, the earliest completion of an acknowledged
    /// operation that left version k or a later one.
    first_done_from: Vec<Option<Duration>>,
}

impl Versions {
    /// Replays `order` (history indices of one key) on the register.
    pub fn new(history: &[Operation], order: &[usize], initial: State) -> Versions {
        let mut values = vec![initial];
        let mut after: Vec<(usize, usize)> = Vec::with_capacity(order.len());
        let mut state = initial;
        for &i in order {
            let o = &history[i];
            if let Some(s) = step(state, o.op, o.outcome == Outcome::Unknown)
                && s != state
            {
                values.push(s);
                state = s;
            }
            after.push((i, values.len() - 1));
        }
        let mut of_state: std::collections::HashMap<State, Vec<usize>> = Default::default();
        for (k, v) in values.iter().enumerate() {
            of_state.entry(*v).or_default().push(k);
        }
        let running_max = |mut list: Vec<(Duration, usize)>| {
            list.sort();
            let mut max = 0;
            for e in &mut list {
                max = max.max(e.1);
                e.1 = max;
            }
            list
        };
        let by_invocation =
            running_max(after.iter().map(|&(i, v)| (history[i].invoked, v)).collect());
        let done: Vec<(Duration, usize)> = after
            .iter()
            .filter(|(i, _)| history[*i].outcome == Outcome::Ok)
            .filter_map(|&(i, v)| history[i].completed.map(|c| (c, v)))
            .collect();
        let mut first_done_from = vec![None; values.len() + 1];
        for &(c, v) in &done {
            let e: &mut Option<Duration> = &mut first_done_from[v];
            *e = Some(e.map_or(c, |x| x.min(c)));
        }
        for k in (0..values.len()).rev() {
            first_done_from[k] = match (first_done_from[k], first_done_from[k + 1]) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Versions {
            values,
            of_state,
            by_invocation,
            by_completion: running_max(done),
            first_done_from,
        }
    }

    /// The highest version among the entries of `list` before time `t`
    /// (strictly before, or at or before with `inclusive`).
    fn max_before(list: &[(Duration, usize)], t: Duration, inclusive: bool) -> usize {
        let n = list.partition_point(|(at, _)| if inclusive { *at <= t } else { *at < t });
        if n == 0 { 0 } else { list[n - 1].1 }
    }

    /// How stale `read` was.
    pub fn age(&self, read: &Operation) -> ReadAge {
        let Op::Read { seen } = read.op else { return ReadAge::Unexplained };
        let Some(read_end) = read.completed else { return ReadAge::Unexplained };
        // The newest version the read may return: any made by an operation
        // invoked before it completed.
        let newest_possible = Self::max_before(&self.by_invocation, read_end, true);
        let Some(seen_version) = self
            .of_state
            .get(&seen)
            .and_then(|ks| ks.iter().rev().find(|&&k| k <= newest_possible))
            .copied()
        else {
            return ReadAge::Unexplained;
        };
        // The oldest it may return: what any operation completed before it
        // was invoked saw or made.
        let required = Self::max_before(&self.by_completion, read.invoked, false);
        if seen_version >= required {
            return ReadAge::Fresh;
        }
        let known_overwritten = self.first_done_from[seen_version + 1].unwrap_or(read.invoked);
        debug_assert!(self.values.len() > required);
        ReadAge::Stale {
            versions: required - seen_version,
            behind: read.invoked.saturating_sub(known_overwritten),
        }
    }
}

#[cfg(test)]
mod tests;
