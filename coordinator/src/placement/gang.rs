//! Device sets on one node as bit masks (bit `i` is the node's `i`-th unit), and the search
//! for a fabric-linked set for a multi-device replica.

/// The most units (devices and MIG instances) one node may have: unit sets are `u128`.
pub(super) const MAX_UNITS_PER_NODE: usize = 128;

/// The search gives up after this many steps and reports no set. Nodes have a handful of
/// devices, where the search needs a few dozen steps; the bound only keeps a pathological
/// node (a hundred devices, sparse links) from stalling a pass.
const SEARCH_BUDGET: u32 = 10_000;

/// The positions of the set bits, lowest first.
pub(super) fn bits(mut mask: u128) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let position = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(position)
    })
}

/// The `count` lowest set bits of `mask` (all of them when it has fewer).
pub(super) fn lowest(mask: u128, count: usize) -> u128 {
    bits(mask).take(count).fold(0, |set, position| set | 1 << position)
}

/// `size` members of `candidates` that are pairwise linked (`adjacency[i]` is the set
/// linked to `i`), or `None`. The set returned is the first in the order of the members'
/// positions, so the same inputs always give the same set.
pub(super) fn linked_set(candidates: u128, size: usize, adjacency: &[u128]) -> Option<u128> {
    if size == 0 || (candidates.count_ones() as usize) < size {
        return None;
    }
    let mut budget = SEARCH_BUDGET;
    extend(0, size, candidates, adjacency, &mut budget)
}

/// Extends `chosen` (whose members are all linked to every one of `candidates`) by
/// `missing` more members.
fn extend(chosen: u128, missing: usize, mut candidates: u128, adjacency: &[u128], budget: &mut u32) -> Option<u128> {
    if missing == 0 {
        return Some(chosen);
    }
    while (candidates.count_ones() as usize) >= missing && *budget > 0 {
        *budget -= 1;
        let next = candidates.trailing_zeros() as usize;
        candidates &= candidates - 1;
        let linked = candidates & adjacency.get(next).copied().unwrap_or(0);
        if let Some(set) = extend(chosen | 1 << next, missing - 1, linked, adjacency, budget) {
            return Some(set);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(positions: &[usize]) -> u128 {
        positions.iter().fold(0, |set, &position| set | 1 << position)
    }

    /// Two islands of four: 0-3 and 4-7, fully linked inside.
    fn islands() -> Vec<u128> {
        (0..8).map(|i| mask(&[0, 1, 2, 3]) << (i / 4 * 4) & !(1 << i)).collect()
    }

    #[test]
    fn finds_the_first_island() {
        assert_eq!(
            linked_set(mask(&[0, 1, 2, 3, 4, 5, 6, 7]), 4, &islands()),
            Some(mask(&[0, 1, 2, 3]))
        );
    }

    #[test]
    fn skips_a_broken_island() {
        assert_eq!(
            linked_set(mask(&[0, 1, 2, 4, 5, 6, 7]), 4, &islands()),
            Some(mask(&[4, 5, 6, 7]))
        );
    }

    #[test]
    fn none_across_islands() {
        assert_eq!(linked_set(mask(&[2, 3, 4, 5]), 3, &islands()), None);
    }

    #[test]
    fn empty_and_oversized_requests() {
        assert_eq!(linked_set(mask(&[0, 1]), 0, &islands()), None);
        assert_eq!(linked_set(mask(&[0, 1]), 3, &islands()), None);
    }

    #[test]
    fn bit_helpers() {
        assert_eq!(bits(mask(&[1, 5, 127])).collect::<Vec<_>>(), vec![1, 5, 127]);
        assert_eq!(lowest(mask(&[1, 5, 9]), 2), mask(&[1, 5]));
    }
}
