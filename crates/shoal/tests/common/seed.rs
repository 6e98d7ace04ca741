//! The seed of a randomized test: printed at the start and again if the
//! test panics anywhere, so that a failure can be replayed.

/// The seed: the environment variable `var` if it is set, else a new one.
pub fn seed(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("{var} must be an unsigned integer")),
        Err(_) => rand::random(),
    }
}

/// Prints how to replay the test if it panics while this lives.
pub struct SeedOnPanic {
    /// The seed.
    pub seed: u64,
    /// The test's name, for the message.
    pub test: &'static str,
    /// The variable that sets the seed.
    pub var: &'static str,
    /// The test target (`cargo test -p shoal --test TARGET`).
    pub target: &'static str,
}

impl Drop for SeedOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{} failed with seed {}; replay: {}={} cargo test -p shoal --test {} -- --nocapture",
                self.test, self.seed, self.var, self.seed, self.target
            );
        }
    }
}

/// `n` base ids in `n` distinct buckets, drawn from `rng` (the last 12
/// digits tell the run's `seed` apart).
pub fn ids_in_distinct_buckets(rng: &mut impl rand::Rng, n: usize, seed: u64) -> Vec<String> {
    let mut buckets = std::collections::BTreeSet::new();
    while buckets.len() < n {
        buckets.insert(rng.random_range(0..=255u8));
    }
    buckets
        .into_iter()
        .map(|b| {
            format!(
                "{b:02x}{:06x}-0000-4000-8000-{:012x}",
                rng.random_range(0..1u32 << 24),
                seed >> 16
            )
        })
        .collect()
}
