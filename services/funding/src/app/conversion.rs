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
    let split = Split {
        bank: l.bank_amount,
        partner: l.partner_amount,
    };
    let insts: Vec<Instalment> = schedule.iter().map(|s| s.inst.clone()).collect();
    let (bank_lines, partner_lines) = domain::funder_schedules(&insts, split, &l.terms);
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
        ..Default::default()
    }
}
