//! Spreading the cluster's jobs over its live nodes: which shard a job is in, how many shards
//! each node should own, and which ones it lets go or takes. Pure functions: the lease task runs
//! them on what the database answered, and the simulation of large clusters runs the same ones on
//! a model of the database (`tests` below).
//!
//! A job's shard is a stable hash of its name. Each live node should own its share of the shards
//! by weight, rounded down or up ([`bounds`]): the loads differ by at most one shard per unit of
//! weight. The assignment is sticky ([`moves`]): a node over its share releases the shards it
//! ranks lowest (and fires them until their windows end); a node under its share takes free
//! shards (released, or their owner dead), in an order of its own (a hash of the node and the
//! shard), so that two nodes rarely want the same one. A live owner is never taken from. So a
//! node that joins moves only the shards it takes (about `shards / nodes`), a node that leaves or
//! dies only its own, and a brief disagreement about who is live costs a moment's delay, never a
//! tug of war.

use crate::schedule::stable_hash;

/// A job's shard among `shards`.
pub fn shard_of(job: &str, shards: u32) -> u32 {
    let hash = stable_hash(job.bytes());
    u32::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

/// A live node of the cluster, as the nodes' table lists it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Member {
    /// Its name.
    pub node: String,
    /// Its share, relative to the others'.
    pub weight: u32,
}

/// The fewest and the most of `shards` shards `node` should own among `members` (which should
/// include it; if not, it counts as one more of weight `weight`): its share by weight, rounded
/// down and up.
pub fn bounds(members: &[Member], shards: u32, node: &str, weight: u32) -> (u32, u32) {
    let listed = members.iter().find(|m| m.node == node);
    let mine = u64::from(listed.map_or(weight, |m| m.weight).max(1));
    let others: u64 = members
        .iter()
        .filter(|m| m.node != node)
        .map(|m| u64::from(m.weight.max(1)))
        .sum();
    let share = u64::from(shards) * mine;
    let total = mine + others;
    let floor = u32::try_from(share / total).unwrap_or(u32::MAX);
    let ceil = u32::try_from(share.div_ceil(total)).unwrap_or(u32::MAX);
    (floor, ceil)
}

/// How the live nodes stand, as the round statement reads it: how many shards the nodes under
/// their lower bound lack in all, less the shards free to take already (`deficit`), and how many
/// spare shards (over their lower bounds) the nodes ranked before this one have (`spare_before`;
/// they give first: the most spare first, ties by a hash of the name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Shards the nodes under their lower bound lack.
    pub deficit: u32,
    /// Spare shards of the nodes that give before this one.
    pub spare_before: u32,
}

/// How many shards a node that owns `owned` lets go and tries to take, given its `bounds` and
/// the cluster's [`Standing`]. Over its upper bound it lets the excess go. While some node lacks
/// shards (one joined), the nodes with spare ones let go just what it lacks, the most spare
/// first: not every node at once. Under its lower bound it takes up to it; under its upper bound
/// it takes up to that only while nobody lacks any, so that what others let go reaches the node
/// that lacks them.
pub fn moves(owned: u32, (floor, ceil): (u32, u32), standing: Standing) -> (u32, u32) {
    let needy = standing.deficit > 0;
    let release = if owned > ceil {
        owned - ceil
    } else if needy && owned > floor {
        (owned - floor).min(standing.deficit.saturating_sub(standing.spare_before))
    } else {
        0
    };
    let kept = owned - release;
    let take = if kept < floor {
        floor - kept
    } else if !needy && kept < ceil {
        ceil - kept
    } else {
        0
    };
    (release, take)
}

/// The rank of a shard for a node: a node releases its lowest first and takes its highest first.
/// A mix of the two hashes (splitmix64's finalizer), so each node orders the shards its own way.
pub fn score(shard: u32, node: &str) -> u64 {
    let mut x = stable_hash(node.bytes()) ^ u64::from(shard).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Every shard, in the order `node` wants to take them: shards are balanced by count, and this
/// order makes the jobs come with them evenly. It interleaves heavy and light shards (`jobs`, by
/// shard) so that, starting from the `carried` jobs of the `owned` shards a node has, every
/// prefix brings its jobs per shard as close to the cluster's average as it can: whichever
/// prefix a node gets (others take from the same free shards at the same time), it gets a fair
/// mix, never all the heavy ones. Ties in the node's own rank.
pub fn preference(jobs: &[usize], carried: usize, owned: usize, node: &str) -> Vec<u32> {
    let all: Vec<u32> = (0u32..).take(jobs.len()).collect();
    interleave(&all, jobs, carried, owned, node)
}

/// `candidates` in the order of [`preference`], from `carried` jobs on `owned` shards.
fn interleave(
    candidates: &[u32],
    jobs: &[usize],
    carried: usize,
    owned: usize,
    node: &str,
) -> Vec<u32> {
    let total: usize = jobs.iter().sum();
    let average = total as f64 / jobs.len().max(1) as f64;
    let load = |shard: u32| {
        jobs.get(usize::try_from(shard).unwrap_or(usize::MAX))
            .copied()
            .unwrap_or(0)
    };
    let mut by_load: Vec<u32> = candidates.to_vec();
    by_load.sort_by_cached_key(|shard| {
        (
            std::cmp::Reverse(load(*shard)),
            std::cmp::Reverse(score(*shard, node)),
        )
    });
    let (mut heavy, mut light) = (0, by_load.len());
    let (mut sum, mut count) = (carried as f64, owned as f64);
    let mut order = Vec::with_capacity(by_load.len());
    while heavy < light {
        // The heaviest left if it keeps the jobs per shard at or below the average, else the
        // lightest left.
        let next = if sum + load(by_load[heavy]) as f64 <= average * (count + 1.0) {
            heavy += 1;
            by_load[heavy - 1]
        } else {
            light -= 1;
            by_load[light]
        };
        sum += load(next) as f64;
        count += 1.0;
        order.push(next);
    }
    order
}

/// Of the shards `owned`, the `count` that a node lets go: it keeps the ones that make a fair
/// mix (the first of them in the order of [`preference`], from nothing), and lets the others go.
pub fn to_release(owned: &[u32], count: usize, jobs: &[usize], node: &str) -> Vec<u32> {
    let keep = owned.len().saturating_sub(count);
    let mut released: Vec<u32> = interleave(owned, jobs, 0, 0, node)
        .into_iter()
        .skip(keep)
        .collect();
    released.sort_unstable();
    released
}

/// Of the shards `free`, the `count` that a node tries to take: the first in its `preference`.
/// The round statement makes this choice in the database; this is its model, for the simulation.
#[cfg(test)]
pub fn to_take(free: &[u32], count: usize, preference: &[u32]) -> Vec<u32> {
    let mut ranked: Vec<u32> = preference
        .iter()
        .copied()
        .filter(|shard| free.contains(shard))
        .collect();
    ranked.truncate(count);
    ranked.sort_unstable();
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                node: format!("node-{i}"),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn bounds_are_the_share_rounded_down_and_up_and_a_newcomer_counts_itself() {
        let three = members(3);
        assert_eq!(bounds(&three, 64, "node-0", 1), (21, 22));
        assert_eq!(bounds(&three, 1, "node-0", 1), (0, 1));
        let mut heavy = three.clone();
        heavy[0].weight = 2;
        assert_eq!(bounds(&heavy, 64, "node-0", 2), (32, 32));
        assert_eq!(bounds(&heavy, 64, "node-1", 1), (16, 16));
        // Not yet listed: it counts as a fourth node.
        assert_eq!(bounds(&three, 64, "new", 1), (16, 16));
    }

    #[test]
    fn a_node_over_its_share_lets_go_and_one_under_it_takes() {
        let calm = Standing::default();
        let lacking = |deficit, spare_before| Standing {
            deficit,
            spare_before,
        };
        // Balanced: nothing is let go. One shard to a cluster: its owner keeps it.
        assert_eq!(moves(1, (0, 1), calm), (0, 0));
        // A node under its upper bound asks for a free shard (none is, when all are owned): a
        // dead owner's are taken that way.
        assert_eq!(moves(21, (21, 22), calm), (0, 1));
        assert_eq!(moves(0, (0, 1), calm), (0, 1));
        // A node joined and lacks 16: the others go down to their lower bound, the first givers
        // first, it takes up to its own, nobody else takes.
        assert_eq!(moves(22, (16, 16), lacking(16, 0)), (6, 0));
        assert_eq!(moves(0, (16, 16), lacking(16, 0)), (0, 16));
        assert_eq!(moves(15, (15, 16), lacking(16, 0)), (0, 0));
        // 300 nodes at 3 or 4 and one joins lacking 3: three of them give one each, not all.
        assert_eq!(moves(4, (3, 4), lacking(3, 0)), (1, 0));
        assert_eq!(moves(4, (3, 4), lacking(3, 2)), (1, 0));
        assert_eq!(moves(4, (3, 4), lacking(3, 3)), (0, 0));
        // Over the upper bound always lets go.
        assert_eq!(moves(30, (20, 21), calm), (9, 0));
    }

    #[test]
    fn every_prefix_of_the_preference_carries_about_the_average_and_release_evens_out() {
        // 60 jobs on 64 shards, clumped: 10 shards of 4, 20 of 1, 34 of 0.
        let jobs: Vec<usize> = (0..64)
            .map(|i| match i {
                0..=9 => 4,
                10..=29 => 1,
                _ => 0,
            })
            .collect();
        let order = preference(&jobs, 0, 0, "n1");
        assert_eq!(order.len(), 64);
        for take in [21, 22, 32] {
            let carried: usize = order[..take].iter().map(|s| jobs[*s as usize]).sum();
            let fair = 60.0 * take as f64 / 64.0;
            assert!(
                (carried as f64 - fair).abs() <= 4.0,
                "the first {take} carry {carried} jobs, fair {fair}"
            );
        }
        // Two nodes order equal shards differently.
        let empty = [0; 64];
        assert_ne!(
            preference(&empty, 0, 0, "n1")[..8],
            preference(&empty, 0, 0, "n2")[..8]
        );
        // Letting 43 of them go, a node keeps a fair mix (not the 21 lightest).
        let released = to_release(&order, 43, &jobs, "n1");
        let kept: usize = order
            .iter()
            .filter(|s| !released.contains(s))
            .map(|s| jobs[*s as usize])
            .sum();
        assert_eq!(released.len(), 43);
        assert!(
            (kept as f64 - 60.0 * 21.0 / 64.0).abs() <= 4.0,
            "kept {kept} jobs"
        );
        // The model of the round's choice takes the first free ones in that order.
        assert_eq!(to_take(&order[5..9], 2, &order), {
            let mut first = order[5..7].to_vec();
            first.sort_unstable();
            first
        });
    }

    #[test]
    fn a_job_keeps_its_shard() {
        assert_eq!(shard_of("invoices", 64), shard_of("invoices", 64));
        assert!(shard_of("invoices", 64) < 64);
        assert_eq!(shard_of("anything", 1), 0);
    }
}
