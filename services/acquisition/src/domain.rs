//! The application's states. Pure: no I/O.

/// Where an application stands; stored by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Submitted,
    KycPassed,
    KycRejected,
    Approved,
    Declined,
    FundsReserved,
    FundingRejected,
    Disbursed,
    Repaying,
    Failed,
    Parked,
    /// The bank's operators abandoned a parked journey: the decision is
    /// recorded, the compensation (voiding the funding reservation) may
    /// still be under way. Goes on only to FAILED (the abandonment
    /// completed) or, when the disbursement happened after all, forward.
    Abandoning,
    /// The loan was repaid in full (funding's loan is SETTLED): terminal.
    Settled,
}

impl Status {
    pub const ALL: [Status; 13] = [
        Status::Submitted,
        Status::KycPassed,
        Status::KycRejected,
        Status::Approved,
        Status::Declined,
        Status::FundsReserved,
        Status::FundingRejected,
        Status::Disbursed,
        Status::Repaying,
        Status::Failed,
        Status::Parked,
        Status::Abandoning,
        Status::Settled,
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Status::Submitted => "SUBMITTED",
            Status::KycPassed => "KYC_PASSED",
            Status::KycRejected => "KYC_REJECTED",
            Status::Approved => "APPROVED",
            Status::Declined => "DECLINED",
            Status::FundsReserved => "FUNDS_RESERVED",
            Status::FundingRejected => "FUNDING_REJECTED",
            Status::Disbursed => "DISBURSED",
            Status::Repaying => "REPAYING",
            Status::Failed => "FAILED",
            Status::Parked => "PARKED",
            Status::Abandoning => "ABANDONING",
            Status::Settled => "SETTLED",
        }
    }

    /// The status stored as `s`; None for a name that is not a status
    /// (callers treat that as an error, never as a default).
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.name() == s)
    }

    /// No further step will happen.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Status::KycRejected
                | Status::Declined
                | Status::FundingRejected
                | Status::Failed
                | Status::Settled
        )
    }

    /// The journey still has automatic steps to run.
    pub fn is_in_progress(&self) -> bool {
        matches!(
            self,
            Status::Submitted | Status::KycPassed | Status::Approved
        )
    }

    /// The borrower counts as "in flight" with the partner: a new
    /// application for the same borrower is a duplicate.
    pub fn holds_borrower(&self) -> bool {
        matches!(
            self,
            Status::Submitted
                | Status::KycPassed
                | Status::Approved
                | Status::FundsReserved
                | Status::Parked
                | Status::Abandoning
        )
    }

    /// An operator's RETRY is taken only from here (an ABANDONING journey
    /// can no longer be retried: its abandonment only goes forward).
    pub fn can_retry(&self) -> bool {
        *self == Status::Parked
    }

    /// An operator's ABANDON starts from PARKED, or continues an
    /// abandonment that stopped half-way (ABANDONING).
    pub fn can_abandon(&self) -> bool {
        matches!(self, Status::Parked | Status::Abandoning)
    }

    /// Loan events move the status forward only.
    pub fn after_loan_event(self, event: Status) -> Status {
        match (self, event) {
            (Status::FundsReserved, Status::Disbursed) => Status::Disbursed,
            (Status::FundsReserved | Status::Disbursed | Status::Repaying, Status::Repaying) => {
                Status::Repaying
            }
            // The repayment that settled the loan (the only one, or the last).
            (Status::FundsReserved | Status::Disbursed | Status::Repaying, Status::Settled) => {
                Status::Settled
            }
            // A reservation voided before disbursement (released or expired).
            (Status::FundsReserved, Status::FundingRejected) => Status::FundingRejected,
            // The pivot happened for a parked or abandoning journey (its
            // reservation went through after all and the bank disbursed):
            // forward only.
            (Status::Parked | Status::Abandoning, Status::Disbursed) => Status::Disbursed,
            (Status::Parked | Status::Abandoning, Status::Repaying) => Status::Repaying,
            (Status::Parked | Status::Abandoning, Status::Settled) => Status::Settled,
            // Anything else changes nothing (a void reported while
            // abandoning included: the abandonment closes the application;
            // SETTLED is terminal).
            (s, _) => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.name()), Some(s));
        }
    }

    #[test]
    fn loan_events_only_move_forward() {
        assert_eq!(
            Status::FundsReserved.after_loan_event(Status::Disbursed),
            Status::Disbursed
        );
        assert_eq!(
            Status::Repaying.after_loan_event(Status::Disbursed),
            Status::Repaying
        );
        assert_eq!(
            Status::Disbursed.after_loan_event(Status::Repaying),
            Status::Repaying
        );
        assert_eq!(
            Status::Declined.after_loan_event(Status::Repaying),
            Status::Declined
        );
        assert_eq!(
            Status::FundsReserved.after_loan_event(Status::FundingRejected),
            Status::FundingRejected
        );
        assert_eq!(
            Status::Disbursed.after_loan_event(Status::FundingRejected),
            Status::Disbursed
        );
    }

    #[test]
    fn abandoning_only_goes_forward() {
        let a = Status::Abandoning;
        assert!(a.holds_borrower() && !a.is_in_progress() && !a.is_terminal());
        assert!(a.can_abandon() && !a.can_retry());
        assert!(Status::Parked.can_retry() && Status::Parked.can_abandon());
        for s in Status::ALL {
            if s != Status::Parked && s != Status::Abandoning {
                assert!(!s.can_retry() && !s.can_abandon(), "{s:?}");
            }
        }
        assert_eq!(a.after_loan_event(Status::Disbursed), Status::Disbursed);
        assert_eq!(a.after_loan_event(Status::Repaying), Status::Repaying);
        assert_eq!(a.after_loan_event(Status::FundingRejected), a);
        assert_eq!(Status::parse("ABANDONING"), Some(a));
        assert_eq!(Status::parse("abandoning"), None);
        assert_eq!(Status::parse(""), None);
    }

    #[test]
    fn settled_is_terminal_and_follows_any_funded_status() {
        let s = Status::Settled;
        assert!(s.is_terminal() && !s.holds_borrower() && !s.is_in_progress());
        assert_eq!(Status::parse("SETTLED"), Some(s));
        for from in [
            Status::FundsReserved,
            Status::Disbursed,
            Status::Repaying,
            Status::Parked,
            Status::Abandoning,
        ] {
            assert_eq!(from.after_loan_event(s), s, "{from:?}");
        }
        // Nothing moves a settled application, and SETTLED reopens nothing.
        for e in [Status::Disbursed, Status::Repaying, Status::FundingRejected] {
            assert_eq!(s.after_loan_event(e), s, "{e:?}");
        }
        for closed in [
            Status::Declined,
            Status::KycRejected,
            Status::FundingRejected,
            Status::Failed,
            Status::Submitted,
            Status::Approved,
        ] {
            assert_eq!(closed.after_loan_event(s), closed, "{closed:?}");
        }
    }

    #[test]
    fn terminal_states_release_the_borrower() {
        for s in Status::ALL {
            if s.is_terminal() {
                assert!(!s.holds_borrower() && !s.is_in_progress());
            }
        }
    }
}
