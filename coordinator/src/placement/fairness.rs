//! Weighted max-min fair shares with guarantee floors and limit ceilings (water-filling).

/// One tenant's terms for the water-filling.
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    /// Fair-share weight (> 0).
    pub weight: f64,
    /// Share it gets first: `min(guarantee, demand)`.
    pub floor: f64,
    /// Share it can use at most: `min(demand, limit)` (the limit only when enforced),
    /// never below `floor`.
    pub ceiling: f64,
}

/// Each claim's fair share of `capacity`: `clamp(level * weight, floor, ceiling)` with the
/// one water level at which the shares add up to the capacity. When the ceilings fit, every
/// claim gets its ceiling; when the floors alone exceed the capacity (guarantees sold
/// beyond the fleet), every claim gets its floor.
pub(super) fn fair_shares(capacity: f64, claims: &[Claim]) -> Vec<f64> {
    let total_ceiling: f64 = claims.iter().map(|claim| claim.ceiling).sum();
    if total_ceiling <= capacity {
        return claims.iter().map(|claim| claim.ceiling).collect();
    }
    let total_floor: f64 = claims.iter().map(|claim| claim.floor).sum();
    if total_floor >= capacity {
        return claims.iter().map(|claim| claim.floor).collect();
    }
    let filled = |level: f64| -> f64 {
        claims
            .iter()
            .map(|claim| (level * claim.weight).clamp(claim.floor, claim.ceiling))
            .sum()
    };
    // The filled total is continuous and non-decreasing in the level, below the capacity
    // at 0 (the floors) and at least the capacity once every claim reaches its ceiling.
    let mut low = 0.0_f64;
    let mut high = claims
        .iter()
        .map(|claim| claim.ceiling / claim.weight)
        .fold(0.0_f64, f64::max);
    for _ in 0..100 {
        let middle = (low + high) / 2.0;
        if filled(middle) < capacity {
            low = middle;
        } else {
            high = middle;
        }
    }
    claims
        .iter()
        .map(|claim| (high * claim.weight).clamp(claim.floor, claim.ceiling))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(weight: f64, floor: f64, ceiling: f64) -> Claim {
        Claim { weight, floor, ceiling }
    }

    fn close(actual: &[f64], expected: &[f64]) -> bool {
        actual.len() == expected.len() && actual.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6)
    }

    #[test]
    fn ceilings_fit() {
        assert!(close(
            &fair_shares(10.0, &[claim(1.0, 0.0, 3.0), claim(1.0, 0.0, 4.0)]),
            &[3.0, 4.0]
        ));
    }

    #[test]
    fn weights_split_the_rest() {
        let shares = fair_shares(9.0, &[claim(2.0, 0.0, 9.0), claim(1.0, 0.0, 9.0)]);
        assert!(close(&shares, &[6.0, 3.0]), "{shares:?}");
    }

    #[test]
    fn floors_and_ceilings_bind() {
        // The first tenant's guarantee (5) beats its weighted share (2.5); the third is
        // capped at 1; the second gets what is left.
        let shares = fair_shares(
            10.0,
            &[claim(1.0, 5.0, 10.0), claim(1.0, 0.0, 10.0), claim(1.0, 0.0, 1.0)],
        );
        assert!(close(&shares, &[5.0, 4.0, 1.0]), "{shares:?}");
    }

    #[test]
    fn oversold_guarantees_get_their_floors() {
        assert!(close(
            &fair_shares(4.0, &[claim(1.0, 3.0, 8.0), claim(1.0, 3.0, 8.0)]),
            &[3.0, 3.0]
        ));
    }
}
