//! Each lender's minimum share holds exactly, to the cent, for every
//! jurisdiction profile: `split_within` against a check that uses only
//! integer multiplication (never the rounding the split itself uses).
use super::*;
use proptest::prelude::*;

const PROFILES: [Jurisdiction; 3] = [Jurisdiction::Cn, Jurisdiction::In2020, Jurisdiction::In2025];

fn minimums(j: Jurisdiction) -> ShareMinimums {
    ShareMinimums {
        partner_bps: j.min_partner_share_bps(),
        bank_bps: j.min_bank_share_bps(),
    }
}

/// `x` cents to the partner out of `p` gives both lenders their minimums:
/// `x / p ≥ partner minimum` and `(p − x) / p ≥ bank minimum`, cross-multiplied.
fn feasible(p: i64, x: i64, min: ShareMinimums) -> bool {
    let (p, x) = (i128::from(p), i128::from(x));
    (0..=p).contains(&x)
        && x * 10_000 >= p * i128::from(min.partner_bps)
        && (p - x) * 10_000 >= p * i128::from(min.bank_bps)
}

/// `x` cents meet the agreement's share: `x / p ≥ share`.
fn meets_share(p: i64, x: i64, share: i64) -> bool {
    i128::from(x) * 10_000 >= i128::from(p) * i128::from(share)
}

/// The split is the one the rules ask for: both minimums hold; the parts
/// sum; and the partner's part is the least that meets the agreement's
/// share when a feasible part meets it, else the most that is feasible
/// (feasible parts form an interval; parts meeting the share are the ones
/// above a bound).
fn check(p: i64, share: i64, min: ShareMinimums) -> Result<(), TestCaseError> {
    match split_within(p, share, min) {
        Some(s) => {
            prop_assert_eq!(s.bank + s.partner, p);
            prop_assert!(feasible(p, s.partner, min), "{s:?} of {p} breaks a minimum");
            if meets_share(p, s.partner, share) {
                prop_assert!(
                    !(feasible(p, s.partner - 1, min) && meets_share(p, s.partner - 1, share)),
                    "{s:?} of {p}: a cent less to the partner would still meet share {share}"
                );
            } else {
                prop_assert!(
                    !feasible(p, s.partner + 1, min),
                    "{s:?} of {p}: the partner could have met share {share}"
                );
            }
        }
        None => {
            // Only a principal too small to share in whole cents.
            prop_assert!(p < 1_000, "{p} at {share} bps refused");
            prop_assert!(
                (0..=p).all(|x| !feasible(p, x, min)),
                "{p} refused though a split exists"
            );
        }
    }
    Ok(())
}

/// Shares at and near each profile's limits, and anywhere between.
fn share_for(j: Jurisdiction) -> impl Strategy<Value = i64> {
    let lo = j.min_partner_share_bps();
    let hi = 10_000 - j.min_bank_share_bps();
    prop_oneof![lo..=(lo + 3), (hi - 3)..=hi, lo..=hi,]
}

fn principal() -> impl Strategy<Value = i64> {
    prop_oneof![
        1i64..1_000,
        1i64..10_000_000_000,
        // Amounts one cent either side of round figures.
        (1i64..10_000_000).prop_flat_map(|k| (k * 10_000 - 1)..=(k * 10_000 + 1)),
    ]
}

#[test]
fn in_2025_the_bank_keeps_ten_percent_of_an_odd_principal() {
    let s = split_within(100_001, 9_000, minimums(Jurisdiction::In2025)).unwrap();
    assert_eq!((s.bank, s.partner), (10_001, 90_000));
    let s = split_within(100_001, 1_000, minimums(Jurisdiction::In2025)).unwrap();
    assert_eq!((s.bank, s.partner), (90_000, 10_001));
    // The plain split rounds the partner up and leaves the bank short.
    assert_eq!(split(100_001, 9_000).bank, 10_000);
}

#[test]
fn a_cent_cannot_be_shared() {
    for j in PROFILES {
        assert_eq!(
            split_within(1, j.min_partner_share_bps(), minimums(j)),
            None
        );
        assert!(split_within(2, j.min_partner_share_bps(), minimums(j)).is_some());
    }
    assert_eq!(split_within(-1, 3_000, minimums(Jurisdiction::Cn)), None);
}

#[test]
fn every_small_principal_at_every_limit_share() {
    for j in PROFILES {
        let min = minimums(j);
        for share in [min.partner_bps, 10_000 - min.bank_bps] {
            for p in 0..20_000 {
                check(p, share, min).unwrap();
            }
        }
    }
}

proptest! {
    #[test]
    fn cn_minimums_hold_exactly(p in principal(), share in share_for(Jurisdiction::Cn)) {
        check(p, share, minimums(Jurisdiction::Cn))?;
    }

    #[test]
    fn in_2020_minimums_hold_exactly(p in principal(), share in share_for(Jurisdiction::In2020)) {
        check(p, share, minimums(Jurisdiction::In2020))?;
    }

    #[test]
    fn in_2025_minimums_hold_exactly(p in principal(), share in share_for(Jurisdiction::In2025)) {
        check(p, share, minimums(Jurisdiction::In2025))?;
    }

    /// Configured minimums (COLEND_FUNDING_MIN_PARTNER_SHARE_BPS) that leave
    /// little or no room between them, and agreements stored before a
    /// minimum was raised (share below it).
    #[test]
    fn any_minimums_hold_or_the_split_is_refused(
        p in 0i64..5_000,
        partner_bps in 0i64..=10_000,
        bank_bps in 0i64..=10_000,
        share in 0i64..=10_000,
    ) {
        let min = ShareMinimums { partner_bps, bank_bps };
        match split_within(p, share, min) {
            Some(s) => {
                prop_assert_eq!(s.bank + s.partner, p);
                prop_assert!(feasible(p, s.partner, min));
            }
            None => prop_assert!((0..=p).all(|x| !feasible(p, x, min))),
        }
    }
}
