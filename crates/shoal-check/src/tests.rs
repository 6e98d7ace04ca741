use super::*;

/// A history under construction; times in milliseconds.
#[derive(Default)]
struct H(Vec<Operation>);

fn ms(t: u64) -> Duration {
    Duration::from_millis(t)
}

fn read(seen: Option<Value>) -> Op {
    Op::Read { seen }
}

fn write(value: Value) -> Op {
    Op::Write { value }
}

fn cas(from: Value, to: Value, swapped: bool) -> Op {
    Op::Cas { from, to, swapped }
}

impl H {
    fn ok(&mut self, p: u64, t0: u64, t1: u64, op: Op) -> usize {
        self.push(p, "k", t0, Some(t1), op, Outcome::Ok)
    }
    fn unknown(&mut self, p: u64, t0: u64, op: Op) -> usize {
        self.push(p, "k", t0, None, op, Outcome::Unknown)
    }
    fn failed(&mut self, p: u64, t0: u64, t1: u64, op: Op) -> usize {
        self.push(p, "k", t0, Some(t1), op, Outcome::Failed)
    }
    fn push(
        &mut self,
        p: u64,
        key: &str,
        t0: u64,
        t1: Option<u64>,
        op: Op,
        outcome: Outcome,
    ) -> usize {
        self.0.push(Operation {
            process: p,
            key: key.into(),
            invoked: ms(t0),
            completed: t1.map(ms),
            op,
            outcome,
        });
        self.0.len() - 1
    }
    fn report(&self) -> Report {
        check(&self.0, &Options::default()).expect("valid history")
    }
    fn assert_linearizable(&self) -> Report {
        let r = self.report();
        assert!(r.is_linearizable(), "expected linearizable:\n{r}");
        r
    }
    /// Asserts a violation and returns the operation it is stuck at.
    fn assert_violation(&self) -> Violation {
        let r = self.report();
        let v = r.violations();
        assert_eq!(v.len(), 1, "expected one violation:\n{r}");
        v[0].clone()
    }
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for seen in [1, 2] {
        let mut h = H::default();
        h.ok(0, 0, 10, write(1));
        h.ok(0, 20, 40, write(2));
        h.ok(1, 25, 30, read(Some(seen)));
        h.ok(1, 50, 60, read(Some(2)));
        h.assert_linearizable();
    }
}

#[test]
fn concurrent_writes_may_land_in_either_order() {
    for last in [1, 2] {
        let mut h = H::default();
        h.ok(0, 0, 30, write(1));
        h.ok(1, 5, 25, write(2));
        h.ok(2, 40, 50, read(Some(last)));
        h.ok(2, 60, 70, read(Some(last)));
        h.assert_linearizable();
    }
}

#[test]
fn a_read_before_any_write_sees_the_key_absent() {
    let mut h = H::default();
    h.ok(0, 0, 10, read(None));
    h.ok(1, 5, 30, write(1));
    h.ok(0, 15, 20, read(None));
    h.ok(0, 40, 50, read(Some(1)));
    h.assert_linearizable();
}

#[test]
fn a_stale_read_after_an_acknowledged_write_completed_is_a_violation() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.ok(0, 20, 30, write(2));
    let stale = h.ok(1, 40, 50, read(Some(1)));
    let v = h.assert_violation();
    assert_eq!(v.op.0, stale);
    assert_eq!(v.states, vec![Some(2)]);
    let text = v.to_string();
    assert!(text.contains("read -> 1"), "{text}");
    assert!(text.contains("register could only hold: 2"), "{text}");
}

#[test]
fn a_lost_acknowledged_write_is_a_violation_and_the_final_check_names_it() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    let lost = h.ok(1, 20, 30, write(2));
    h.ok(2, 40, 50, read(Some(1)));
    h.assert_violation();
    let f = check_final(&h.0, "k", Some(1), None);
    assert_eq!(f, FinalCheck { lost: vec![lost], never_written: false });
    // The key found absent after both: both writes are lost.
    assert_eq!(check_final(&h.0, "k", None, None).lost, vec![0, lost]);
    // The later write as the final value: nothing lost.
    assert_eq!(check_final(&h.0, "k", Some(2), None), FinalCheck::default());
}

#[test]
fn a_read_of_a_value_never_written_is_a_violation() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.ok(1, 5, 15, write(2));
    let bad = h.ok(2, 3, 20, read(Some(3)));
    assert_eq!(h.assert_violation().op.0, bad);
    assert!(check_final(&h.0, "k", Some(3), None).never_written);
}

#[test]
fn a_failed_write_is_never_seen() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.failed(1, 20, 30, write(2));
    h.ok(2, 40, 50, read(Some(2)));
    h.assert_violation();
}

#[test]
fn a_cas_that_swapped_a_value_no_longer_current_is_a_violation() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.ok(0, 20, 30, write(2));
    let bad = h.ok(1, 40, 50, cas(1, 3, true));
    assert_eq!(h.assert_violation().op.0, bad);
}

#[test]
fn a_cas_that_did_not_swap_the_current_value_is_a_violation() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.ok(1, 20, 30, cas(1, 3, false));
    h.assert_violation();
}

#[test]
fn cas_chains_linearize() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(0));
    h.ok(0, 20, 30, cas(0, 1, true));
    // Two concurrent CASes from 1: exactly one may win.
    h.ok(1, 40, 60, cas(1, 2, true));
    h.ok(2, 45, 65, cas(1, 5, false));
    h.ok(0, 50, 55, read(Some(2)));
    h.ok(2, 70, 80, cas(2, 3, true));
    h.ok(1, 90, 100, read(Some(3)));
    h.assert_linearizable();

    // Both winning is a violation.
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.ok(1, 40, 60, cas(1, 2, true));
    h.ok(2, 45, 65, cas(1, 5, true));
    h.assert_violation();
}

#[test]
fn an_unknown_write_may_have_happened() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.unknown(1, 20, write(2));
    h.ok(0, 100, 110, read(Some(2)));
    h.assert_linearizable();
    // ...but only once: the older value cannot come back.
    h.ok(0, 120, 130, read(Some(1)));
    h.assert_violation();
}

#[test]
fn an_unknown_write_may_not_have_happened() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.unknown(1, 20, write(2));
    h.ok(0, 100, 110, read(Some(1)));
    h.assert_linearizable();
}

#[test]
fn an_unknown_write_may_take_effect_long_after_it_was_sent() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.unknown(1, 20, write(2));
    h.ok(0, 50, 60, read(Some(1)));
    h.ok(0, 1000, 1010, read(Some(2)));
    h.assert_linearizable();
}

#[test]
fn an_unknown_write_cannot_take_effect_before_it_was_sent() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.ok(0, 20, 30, read(Some(2)));
    h.unknown(1, 40, write(2));
    h.assert_violation();
}

#[test]
fn an_unobserved_unknown_write_still_explains_a_cas_that_did_not_swap() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.unknown(1, 15, write(2));
    h.ok(0, 20, 30, cas(1, 3, false));
    let r = h.assert_linearizable();
    assert_eq!(r.keys[0].pruned, 1);
}

#[test]
fn an_unknown_cas_swaps_only_from_its_expected_value() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.unknown(1, 15, cas(1, 2, true));
    h.ok(0, 20, 30, read(Some(2)));
    h.assert_linearizable();

    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.ok(0, 12, 14, write(5));
    h.unknown(1, 15, cas(1, 2, true));
    h.ok(0, 20, 30, read(Some(2)));
    h.assert_violation();
}

#[test]
fn keys_are_checked_independently() {
    let mut h = H::default();
    h.push(0, "a", 0, Some(10), write(1), Outcome::Ok);
    h.push(0, "b", 20, Some(30), read(None), Outcome::Ok);
    h.push(0, "b", 40, Some(50), read(Some(1)), Outcome::Ok);
    let r = h.report();
    assert_eq!(r.keys.len(), 2);
    assert!(matches!(r.keys[0].verdict, Verdict::Linearizable));
    assert_eq!(r.violations().len(), 1);
    assert_eq!(r.violations()[0].key, "b");
}

#[test]
fn the_violation_names_the_operations_concurrent_with_the_stuck_one() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    let w = h.ok(1, 20, 40, write(2));
    let r1 = h.ok(2, 25, 30, read(Some(2)));
    let r2 = h.ok(3, 32, 38, read(Some(1)));
    h.ok(0, 100, 110, write(7));
    let v = h.assert_violation();
    assert_eq!(v.op.0, r2);
    let concurrent: Vec<usize> = v.concurrent.iter().map(|c| c.0).collect();
    assert_eq!(concurrent, vec![w]);
    assert!(v.before.iter().any(|b| b.0 == r1), "{v}");
}

#[test]
fn a_malformed_history_is_refused() {
    let mut h = H::default();
    h.push(0, "k", 0, None, write(1), Outcome::Ok);
    assert!(check(&h.0, &Options::default()).is_err());
    let mut h = H::default();
    h.push(0, "k", 10, Some(5), write(1), Outcome::Ok);
    assert!(check(&h.0, &Options::default()).is_err());
}

#[test]
fn a_search_past_its_budget_is_undecided() {
    // Many unknown writes all observed, then an impossible read: the full
    // search has to try many orders.
    let mut h = H::default();
    for v in 0..24 {
        h.unknown(v, v, write(v as i64));
    }
    for v in 0..24 {
        h.ok(100, 100 + 10 * v, 105 + 10 * v, read(Some(v as i64)));
    }
    h.ok(100, 1000, 1010, read(Some(3)));
    let r = check(&h.0, &Options { budget: 10_000, ..Options::default() }).expect("valid");
    assert_eq!(r.undecided(), vec!["k"]);
    assert!(!r.is_linearizable());
    assert!(r.violations().is_empty());
}

#[test]
fn read_age_measures_how_far_behind_a_read_was() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.ok(0, 20, 30, write(2));
    h.ok(0, 40, 50, write(3));
    let r = h.assert_linearizable();
    let order = r.order("k").expect("order").to_vec();
    let weak = |t0: u64, seen: i64| Operation {
        process: 9,
        key: "k".into(),
        invoked: ms(t0),
        completed: Some(ms(t0 + 5)),
        op: read(Some(seen)),
        outcome: Outcome::Ok,
    };
    assert_eq!(read_age(&h.0, &order, &weak(60, 3), None), ReadAge::Fresh);
    assert_eq!(read_age(&h.0, &order, &weak(45, 2), None), ReadAge::Fresh);
    assert_eq!(
        read_age(&h.0, &order, &weak(60, 1), None),
        ReadAge::Stale { versions: 2, behind: ms(30) }
    );
    assert_eq!(read_age(&h.0, &order, &weak(5, 3), None), ReadAge::Unexplained);
    assert_eq!(read_age(&h.0, &order, &weak(60, 42), None), ReadAge::Unexplained);
}

/// A small deterministic generator for the randomized tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A history of real registers: every operation takes effect at a point
/// inside its interval (unknown ones at some point after invocation, or
/// never), so the history is linearizable by construction.
fn generated(seed: u64, ops: usize, keys: usize, processes: usize) -> Vec<Operation> {
    let mut rng = Rng(seed);
    // (effect time, process-local sequence) per operation; answers later.
    struct Planned {
        op: Operation,
        effect: Option<u64>,
    }
    let mut planned = Vec::new();
    let mut clock = vec![0u64; processes];
    let mut next_value = 1i64;
    for n in 0..ops {
        let p = n % processes;
        let t0 = clock[p] + rng.below(50);
        let effect = t0 + 1 + rng.below(100);
        let t1 = effect + 1 + rng.below(100);
        clock[p] = t1;
        let key = format!("k{}", rng.below(keys as u64));
        let op = match rng.below(10) {
            0..=3 => read(None),
            4..=6 => {
                next_value += 1;
                write(next_value)
            }
            _ => {
                next_value += 1;
                cas(next_value - 1 - rng.below(4) as i64, next_value, false)
            }
        };
        let unknown = !matches!(op, Op::Read { .. }) && rng.below(50) == 0;
        let (outcome, completed, effect) = if unknown {
            // Took effect late, or not at all.
            let effect = match rng.below(2) {
                0 => Some(effect + rng.below(2000)),
                _ => None,
            };
            (Outcome::Unknown, None, effect)
        } else {
            (Outcome::Ok, Some(ms(t1)), Some(effect))
        };
        planned.push(Planned {
            op: Operation { process: p as u64, key, invoked: ms(t0), completed, op, outcome },
            effect,
        });
    }
    let mut order: Vec<usize> =
        (0..planned.len()).filter(|&i| planned[i].effect.is_some()).collect();
    order.sort_by_key(|&i| (planned[i].effect, i));
    let mut registers: std::collections::HashMap<String, State> = Default::default();
    for i in order {
        let p = &mut planned[i];
        let state = registers.entry(p.op.key.clone()).or_default();
        match &mut p.op.op {
            Op::Read { seen } => *seen = *state,
            Op::Write { value } => *state = Some(*value),
            Op::Cas { from, to, swapped } => {
                *swapped = *state == Some(*from);
                if *swapped {
                    *state = Some(*to);
                }
            }
        }
    }
    planned.into_iter().map(|p| p.op).collect()
}

#[test]
fn generated_histories_of_real_registers_are_linearizable_and_checked_quickly() {
    for seed in [1, 2, 3] {
        let history = generated(seed * 7919, 10_000, 4, 8);
        let started = std::time::Instant::now();
        let r = check(&history, &Options::default()).expect("valid");
        assert!(r.is_linearizable(), "seed {seed}:\n{r}");
        let unknown = history.iter().filter(|o| o.outcome == Outcome::Unknown).count();
        assert!(unknown > 50, "the generator makes unknown operations ({unknown})");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "seed {seed}: {:?}\n{r}",
            started.elapsed()
        );
    }
}

#[test]
fn a_corrupted_read_in_a_generated_history_is_found() {
    let mut history = generated(4242, 4_000, 3, 6);
    let i = history
        .iter()
        .rposition(|o| matches!(o.op, Op::Read { seen: Some(_) }) && o.outcome == Outcome::Ok)
        .expect("a read");
    // A value nobody wrote.
    history[i].op = read(Some(-1));
    let r = check(&history, &Options::default()).expect("valid");
    let v = r.violations();
    assert_eq!(v.len(), 1, "{r}");
    assert_eq!(v[0].op.0, i);
}

#[test]
fn versions_place_reads_with_compare_and_sets_and_unknown_writes() {
    let mut h = H::default();
    h.ok(0, 0, 10, write(1));
    h.ok(0, 20, 30, cas(1, 2, true));
    h.ok(0, 40, 50, cas(7, 3, false));
    h.unknown(1, 55, write(4));
    h.ok(0, 60, 70, read(Some(4)));
    h.ok(0, 80, 90, write(5));
    let r = h.assert_linearizable();
    let versions = Versions::new(&h.0, r.order("k").expect("order"), None);
    let weak = |t0: u64, seen: Option<i64>| Operation {
        process: 9,
        key: "k".into(),
        invoked: ms(t0),
        completed: Some(ms(t0 + 2)),
        op: read(seen),
        outcome: Outcome::Ok,
    };
    // Absent before the first write completed; stale by three versions after
    // the read of 4 completed.
    assert_eq!(versions.age(&weak(5, None)), ReadAge::Fresh);
    assert_eq!(versions.age(&weak(75, None)), ReadAge::Stale { versions: 3, behind: ms(65) });
    // A CAS that did not swap makes no version.
    assert_eq!(versions.age(&weak(52, Some(2))), ReadAge::Fresh);
    assert_eq!(versions.age(&weak(75, Some(2))), ReadAge::Stale { versions: 1, behind: ms(5) });
    // The unknown write's value, once it was there.
    assert_eq!(versions.age(&weak(56, Some(4))), ReadAge::Fresh);
    assert_eq!(versions.age(&weak(95, Some(5))), ReadAge::Fresh);
    assert_eq!(versions.age(&weak(95, Some(4))), ReadAge::Stale { versions: 1, behind: ms(5) });
    assert_eq!(versions.age(&weak(95, Some(3))), ReadAge::Unexplained);
}
