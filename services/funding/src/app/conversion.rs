//! Stored values to and from the contracts: loans, day counts, waterfalls.
use super::*;

/// A stored repayment method (the contract's value); `None` for anything
/// a loan cannot have.
pub(super) fn method_of(m: i64) -> Option<Method> {
    match RepaymentMethod::try_from(i32::try_from(m).ok()?) {
        Ok(RepaymentMethod::EqualInstalment) => Some(Method::EqualInstalment),
        Ok(RepaymentMethod::EqualPrincipal) => Some(Method::EqualPrincipal),
        Ok(RepaymentMethod::InterestFirst) => Some(Method::InterestFirst),
        _ => None,
    }
}

pub(super) fn method_pb(m: Method) -> RepaymentMethod {
    match m {
        Method::EqualInstalment => RepaymentMethod::EqualInstalment,
        Method::EqualPrincipal => RepaymentMethod::EqualPrincipal,
        Method::InterestFirst => RepaymentMethod::InterestFirst,
    }
}

pub(super) fn status_pb(s: LoanStatus) -> pb::LoanStatus {
    match s {
        LoanStatus::Reserved => pb::LoanStatus::Reserved,
        LoanStatus::Disbursed => pb::LoanStatus::Disbursed,
        LoanStatus::Void => pb::LoanStatus::Void,
        LoanStatus::Settled => pb::LoanStatus::Settled,
    }
}

/// The agreement's day count; unspecified is ACT/360.
pub fn day_count_of(v: i32) -> DayCount {
    match pb::DayCount::try_from(v) {
        Ok(pb::DayCount::Act365) => DayCount::Act365,
        _ => DayCount::Act360,
    }
}

/// The agreement's waterfall; empty is the default, anything but a
/// permutation of the three components is `None`.
pub fn waterfall_of(v: &[i32]) -> Option<Waterfall> {
    if v.is_empty() {
        return Some(Waterfall::default());
    }
    let names: Vec<&str> = v
        .iter()
        .map(|c| match pb::Component::try_from(*c) {
            Ok(pb::Component::Penalty) => "PENALTY",
            Ok(pb::Component::Interest) => "INTEREST",
            Ok(pb::Component::Principal) => "PRINCIPAL",
            Ok(pb::Component::Fee) => "FEE",
            _ => "?",
        })
        .collect();
    Waterfall::parse(&names.join(","))
}

/// Why an agreement may not state this waterfall order; `None` when the
/// allocator applies it exactly as stated. Penalty is owed on the loan as a
/// whole, so it is paid before every instalment or after them, never between
/// an instalment's components. Agreements stored before this rule keep the
/// order they were stored with (penalty not first is paid after the instalments).
pub fn waterfall_problem(v: &[i32]) -> Option<String> {
    match waterfall_of(v) {
        Some(w) if domain::waterfall_supported(&w) => None,
        _ => Some(
            "must be empty (PENALTY, FEE, INTEREST, PRINCIPAL) or list PENALTY, INTEREST and \
             PRINCIPAL (and FEE, else fees are paid just before interest) once each, with \
             PENALTY first or last"
                .into(),
        ),
    }
}

pub(super) fn day_count_pb(d: DayCount) -> pb::DayCount {
    match d {
        DayCount::Act360 => pb::DayCount::Act360,
        DayCount::Act365 => pb::DayCount::Act365,
    }
}

pub(super) fn component_pb(b: Bucket) -> pb::Component {
    match b {
        Bucket::Penalty => pb::Component::Penalty,
        Bucket::Fee => pb::Component::Fee,
        Bucket::Interest => pb::Component::Interest,
        Bucket::Principal => pb::Component::Principal,
    }
}

pub(super) fn loan_pb(
    l: &LoanRow,
    schedule: &[InstalmentState],
    repayments: Vec<pb::Repayment>,
) -> pb::Loan {
    let c = &l.currency;
    let live = l.status.was_disbursed();
    let insts: Vec<Instalment> = schedule.iter().map(|s| s.inst.clone()).collect();
    let (bank_lines, partner_lines) = loan_state(l, schedule.to_vec())
        .map(|state| domain::funder_schedules(&state))
        .unwrap_or_default();
    let lines = |f: Funder, v: &[domain::FunderLine]| -> Vec<pb::FunderInstalment> {
        v.iter()
            .map(|x| pb::FunderInstalment {
                funder: f as i32,
                sequence: x.seq,
                principal: money(x.principal, c),
                interest: money(x.interest, c),
                fee: money(x.fee, c),
            })
            .collect()
    };
    let mut funder_schedule = lines(Funder::Bank, &bank_lines);
    funder_schedule.extend(lines(Funder::Partner, &partner_lines));
    let (p, a) = (&l.paid, &l.accrued);
    let balance = |f: Funder| {
        // (principal, principal paid, interest accrued/paid, fee accrued/paid, penalty accrued/paid)
        let v = match f {
            Funder::Partner => [
                l.partner_amount,
                p.partner_principal,
                a.partner_interest,
                p.partner_interest,
                a.partner_fee,
                p.partner_fee,
                a.partner_penalty,
                p.partner_penalty,
            ],
            _ => [
                l.bank_amount,
                p.principal - p.partner_principal,
                a.interest - a.partner_interest,
                p.interest - p.partner_interest,
                a.fee - a.partner_fee,
                p.fee - p.partner_fee,
                a.penalty - a.partner_penalty,
                p.penalty - p.partner_penalty,
            ],
        };
        pb::FunderBalance {
            funder: f as i32,
            principal_outstanding: money(if live { v[0] - v[1] } else { 0 }, c),
            interest_accrued: money(v[2], c),
            interest_paid: money(v[3], c),
            fee_accrued: money(v[4], c),
            fee_paid: money(v[5], c),
            penalty_accrued: money(v[6], c),
            penalty_paid: money(v[7], c),
        }
    };
    let balances = vec![balance(Funder::Bank), balance(Funder::Partner)];
    pb::Loan {
        loan_id: l.loan_id.clone(),
        application_id: l.application_id.clone(),
        partner_id: l.partner_id.clone(),
        status: status_pb(l.status) as i32,
        principal: money(l.principal, c),
        bank_amount: money(l.bank_amount, c),
        partner_amount: money(l.partner_amount, c),
        agreement_version: l.agreement_version as i32,
        partner_share_bps: l.terms.partner_share_bps as i32,
        bank_rate_bps: l.terms.bank_rate_bps as i32,
        partner_rate_bps: l.terms.partner_rate_bps as i32,
        annual_rate_bps: l.annual_rate_bps as i32,
        term_months: l.term_months as i32,
        repayment_method: method_pb(l.method) as i32,
        disbursed_on: l.disbursed_on.clone(),
        disbursement_transaction_ref: l.disbursement_ref.clone(),
        schedule: insts
            .iter()
            .map(|i| pb::Instalment {
                sequence: i.seq,
                due_date: format_date(i.due),
                principal: money(i.principal, c),
                interest: money(i.interest, c),
                total: money(i.total(), c),
                fee: money(i.fee, c),
            })
            .collect(),
        bank_outstanding: balances[0].principal_outstanding.clone(),
        partner_outstanding: balances[1].principal_outstanding.clone(),
        repayments,
        reservation_expires_at: (l.status == LoanStatus::Reserved).then(|| timestamp(l.expires_at)),
        day_count: day_count_pb(l.day_count) as i32,
        penalty_rate_bps: l.penalty_rate_bps as i32,
        waterfall: l
            .waterfall
            .0
            .iter()
            .map(|b| component_pb(*b) as i32)
            .collect(),
        funder_schedule,
        balances,
        annual_fee_bps: l.fee_bps as i32,
        fee_partner_share_bps: l.terms.fee_partner_bps as i32,
        reserved_on: l.reserved_on.clone(),
        interest_split: interest_split_pb(l.terms.interest_split) as i32,
        residual_party: party_pb(l.terms.residual_party) as i32,
        allow_negative_residual: l.terms.allow_negative_residual,
        accrued_through: if live && l.accrued_through.is_empty() {
            l.disbursed_on.clone()
        } else {
            l.accrued_through.clone()
        },
        overpayment: live.then(|| money(l.overpaid, c)).flatten(),
    }
}

/// The agreement's terms a loan freezes (rule P2). A version stored before
/// the interest split existed is RATE_WEIGHTED (migration 0011) and its
/// loans are too, until the bank stores a new version; an interest split no
/// agreement can state is PRO_RATA.
pub(super) fn agreement_terms(a: &pb::Agreement) -> Terms {
    Terms {
        partner_share_bps: i64::from(a.partner_share_bps),
        bank_rate_bps: i64::from(a.bank_rate_bps),
        partner_rate_bps: i64::from(a.partner_rate_bps),
        fee_partner_bps: i64::from(a.fee_partner_share_bps),
        interest_split: stored_interest_split(a.interest_split).unwrap_or_default(),
        residual_party: party_of(a.residual_party).unwrap_or_default(),
        allow_negative_residual: a.allow_negative_residual,
    }
}

/// How a loan or agreement shares interest, as the contract says it.
pub(super) fn interest_split_pb(s: InterestSplit) -> pb::InterestSplit {
    match s {
        InterestSplit::ProRata => pb::InterestSplit::ProRata,
        InterestSplit::OwnRate => pb::InterestSplit::OwnRate,
        InterestSplit::RateWeighted => pb::InterestSplit::RateWeighted,
    }
}

/// An agreement's interest split: UNSPECIFIED is PRO_RATA; RATE_WEIGHTED
/// (loans booked before the split existed) and unknown values are `None`.
pub(super) fn interest_split_of(v: i32) -> Option<InterestSplit> {
    match pb::InterestSplit::try_from(v) {
        Ok(pb::InterestSplit::Unspecified | pb::InterestSplit::ProRata) => {
            Some(InterestSplit::ProRata)
        }
        Ok(pb::InterestSplit::OwnRate) => Some(InterestSplit::OwnRate),
        _ => None,
    }
}

/// A stored agreement's interest split: what [`interest_split_of`] accepts,
/// and RATE_WEIGHTED, which only versions stored before the split existed
/// carry.
fn stored_interest_split(v: i32) -> Option<InterestSplit> {
    match pb::InterestSplit::try_from(v) {
        Ok(pb::InterestSplit::RateWeighted) => Some(InterestSplit::RateWeighted),
        _ => interest_split_of(v),
    }
}

pub(super) fn party_pb(p: Party) -> Funder {
    match p {
        Party::Bank => Funder::Bank,
        Party::Partner => Funder::Partner,
    }
}

/// An agreement's residual party: UNSPECIFIED is the bank; unknown values are `None`.
pub(super) fn party_of(v: i32) -> Option<Party> {
    match Funder::try_from(v) {
        Ok(Funder::Unspecified | Funder::Bank) => Some(Party::Bank),
        Ok(Funder::Partner) => Some(Party::Partner),
        _ => None,
    }
}
