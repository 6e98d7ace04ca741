//! The capacity-weighted ideal replica count of every node, and the balance
//! bounds derived from it.
//!
//! Without zone constraints the ideal of node `i` is `R * c_i / C` (`R` the
//! total number of replicas, `c_i` its capacity, `C` the sum of capacities),
//! except that a node can hold at most one replica of each bucket, so no node
//! can take more than [`BUCKET_COUNT`]. Nodes whose share would exceed that are
//! pinned at [`BUCKET_COUNT`] and the rest is shared among the others by
//! capacity ("water-filling"): exactly the proportional split whenever it is
//! achievable.
//!
//! Zone spreading (rule 1) bounds the total of each zone. With `k` replicas per
//! bucket and `Z` zones:
//! - `k <= Z`: a bucket has at most one replica per zone, so a zone holds at
//!   most [`BUCKET_COUNT`] replicas;
//! - `k >= Z`: a bucket has at least one replica in every zone, so a zone holds
//!   at least [`BUCKET_COUNT`], and at most `BUCKET_COUNT * (k - Z + 1)`.
//!
//! The ideal is the water-filling of a common fill level `λ` (node `i` gets
//! `min(256, λ c_i)`) in which each zone total is clamped to its bounds; the
//! nodes of a clamped zone share the clamped total by capacity. When no zone
//! bound binds, this is the plain capacity-weighted ideal. The level is found
//! without search: with every unclamped zone at level `λ0`, the sum of the
//! amounts by which zones fall below their floors and rise above their caps
//! tells on which side of `λ0` the solution lies, and the zones on the other
//! side are definitely clamped; fix them and repeat. Each round clamps at least
//! one zone, so there are at most `Z` rounds.
//!
//! All arithmetic is exact (rationals over `u128`), so an ideal of exactly 192
//! gives the bounds `[192, 192]`, never `[191, 192]`.

use shoal_types::BUCKET_COUNT;

/// The most replicas a node (and the least a zone, when it must appear in every
/// bucket) can hold.
const PER_BUCKET: u128 = BUCKET_COUNT as u128;

/// The replica count bounds of one node: `floor(ideal) ..= ceil(ideal)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Share {
    /// The ideal as a fraction `num / den`.
    pub num: u128,
    /// The denominator of the ideal, at least 1.
    pub den: u128,
}

impl Share {
    /// `floor(ideal)`.
    pub fn min(self) -> usize {
        to_usize(self.num / self.den)
    }

    /// `ceil(ideal)`.
    pub fn max(self) -> usize {
        to_usize(self.num.div_ceil(self.den))
    }

    /// The ideal as a float, for display.
    pub fn ideal(self) -> f64 {
        self.num as f64 / self.den as f64
    }
}

fn to_usize(v: u128) -> usize {
    usize::try_from(v).expect("replica counts are at most 256 per node")
}

/// Splits `total` among items of the given weights in proportion to weight,
/// no item above [`PER_BUCKET`]. Returns the numerators over one common
/// denominator. `total` must not exceed `PER_BUCKET * weights.len()`.
fn water_fill(weights: &[u128], total: u128) -> (Vec<u128>, u128) {
    let mut pinned = vec![false; weights.len()];
    loop {
        let free_weight: u128 =
            weights.iter().zip(&pinned).filter(|(_, p)| !**p).map(|(w, _)| w).sum();
        let pinned_count = pinned.iter().filter(|p| **p).count() as u128;
        let budget = total.saturating_sub(PER_BUCKET * pinned_count);
        if free_weight == 0 {
            return (vec![PER_BUCKET; weights.len()], 1);
        }
        let mut changed = false;
        for (w, p) in weights.iter().zip(pinned.iter_mut()) {
            // budget * w / free_weight > PER_BUCKET, in integers.
            if !*p && budget * w > PER_BUCKET * free_weight {
                *p = true;
                changed = true;
            }
        }
        if !changed {
            let nums = weights
                .iter()
                .zip(&pinned)
                .map(|(w, p)| if *p { PER_BUCKET * free_weight } else { budget * w })
                .collect();
            return (nums, free_weight);
        }
    }
}

/// The ideal share of every node, for `replicas_per_bucket` (`k`) replicas of
/// each bucket. `zones[z]` lists the capacities (at least 1) of the nodes of
/// zone `z`; the result has the same shape. Requires `k` to be at most the
/// number of nodes.
pub(crate) fn shares(zones: &[Vec<u128>], replicas_per_bucket: usize) -> Vec<Vec<Share>> {
    let k = replicas_per_bucket as u128;
    let zone_count = zones.len() as u128;
    let total = PER_BUCKET * k;
    // The bounds on each zone's total implied by zone spreading.
    let bounds: Vec<(u128, u128)> = zones
        .iter()
        .map(|nodes| {
            let n = nodes.len() as u128;
            if k == 0 {
                (0, 0)
            } else if k < zone_count {
                (0, PER_BUCKET)
            } else {
                (PER_BUCKET, PER_BUCKET * n.min(k - zone_count + 1))
            }
        })
        .collect();

    let mut fixed: Vec<Option<u128>> = vec![None; zones.len()];
    loop {
        let free: Vec<usize> = (0..zones.len()).filter(|z| fixed[*z].is_none()).collect();
        if free.is_empty() {
            break;
        }
        let budget = total - fixed.iter().flatten().sum::<u128>();
        let weights: Vec<u128> = free.iter().flat_map(|z| zones[*z].iter().copied()).collect();
        let (nums, den) = water_fill(&weights, budget);
        // The total of each free zone at this level, over `den`.
        let mut offset = 0;
        let mut below = Vec::new();
        let mut above = Vec::new();
        let (mut deficit, mut excess) = (0u128, 0u128);
        for &z in &free {
            let sum: u128 = nums[offset..offset + zones[z].len()].iter().sum();
            offset += zones[z].len();
            let (floor, cap) = bounds[z];
            if sum < floor * den {
                deficit += floor * den - sum;
                below.push(z);
            } else if sum > cap * den {
                excess += sum - cap * den;
                above.push(z);
            }
        }
        if below.is_empty() && above.is_empty() {
            break;
        }
        // Clamping raises the grand total by `deficit - excess`; the true level
        // lies on the side that undoes it, where these zones stay clamped.
        if deficit >= excess {
            for &z in &below {
                fixed[z] = Some(bounds[z].0);
            }
        }
        if excess >= deficit {
            for &z in &above {
                fixed[z] = Some(bounds[z].1);
            }
        }
    }

    // Final split: free zones share one level, clamped zones split their total.
    let free: Vec<usize> = (0..zones.len()).filter(|z| fixed[*z].is_none()).collect();
    let budget = total - fixed.iter().flatten().sum::<u128>();
    let weights: Vec<u128> = free.iter().flat_map(|z| zones[*z].iter().copied()).collect();
    let (free_nums, free_den) = water_fill(&weights, budget);
    let mut result: Vec<Vec<Share>> = vec![Vec::new(); zones.len()];
    let mut offset = 0;
    for &z in &free {
        result[z] = free_nums[offset..offset + zones[z].len()]
            .iter()
            .map(|&num| Share { num, den: free_den })
            .collect();
        offset += zones[z].len();
    }
    for (z, t) in fixed.iter().enumerate() {
        if let Some(t) = t {
            let (nums, den) = water_fill(&zones[z], *t);
            result[z] = nums.into_iter().map(|num| Share { num, den }).collect();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(zones: &[Vec<u128>], k: usize) -> Vec<Vec<(usize, usize)>> {
        shares(zones, k).iter().map(|z| z.iter().map(|s| (s.min(), s.max())).collect()).collect()
    }

    #[test]
    fn equal_capacities_one_zone() {
        assert_eq!(bounds(&[vec![1, 1, 1, 1]], 3), vec![vec![(192, 192); 4]]);
        assert_eq!(bounds(&[vec![1, 1, 1, 1, 1]], 3), vec![vec![(153, 154); 5]]);
    }

    #[test]
    fn capacity_weighted() {
        // 768 replicas over capacities 1:2:3 -> 128, 256, 384 -> the last is
        // pinned at 256 and the first two share 512 as 1:2.
        let b = bounds(&[vec![1], vec![2], vec![3]], 3);
        assert_eq!(b, vec![vec![(256, 256)]; 3]);
        let b = bounds(&[vec![1, 2, 3, 10]], 2);
        // 512 over 1:2:3:10: the last would get 320 -> pinned at 256; the rest
        // share 256 as 1:2:3.
        assert_eq!(b, vec![vec![(42, 43), (85, 86), (128, 128), (256, 256)]]);
    }

    #[test]
    fn small_zone_is_raised_to_its_floor() {
        // k = 3 over 2 zones: every bucket needs a replica in zone 0, whose one
        // node therefore holds all 256; zone 1 shares the other 512.
        let b = bounds(&[vec![1], vec![1, 1, 1, 1, 1]], 3);
        assert_eq!(b[0], vec![(256, 256)]);
        assert_eq!(b[1], vec![(102, 103); 5]);
    }

    #[test]
    fn big_zone_is_capped() {
        // k = 2 over 3 zones: at most one replica per zone per bucket, so the
        // zone of five nodes holds at most 256.
        let b = bounds(&[vec![1; 5], vec![1], vec![1]], 2);
        assert_eq!(b[0], vec![(51, 52); 5]);
        assert_eq!(b[1], vec![(128, 128)]);
        assert_eq!(b[2], vec![(128, 128)]);
    }

    #[test]
    fn floors_and_caps_together() {
        // k = 3 over 2 zones: zone totals in [256, 512]. Capacities 1 vs 10
        // would give 70 vs 698; both clamp.
        let b = bounds(&[vec![1], vec![5, 5]], 3);
        assert_eq!(b, vec![vec![(256, 256)], vec![(256, 256), (256, 256)]]);
    }
}
