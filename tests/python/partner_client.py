#!/usr/bin/env python3
"""A partner's integration, written only from colend's protobuf contracts.

Generates Python stubs from ../../proto with grpcio-tools, then drives the
journey against a running mesh: the bank sets up the partner's agreement,
the partner submits applications and follows them live, the bank disburses,
and the partner reads the final status and history.

    python3 -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/python partner_client.py --endpoint 127.0.0.1:50051 --partner acme \
        --partner-token "$(colend credentials issue --class partner --partner-id acme)" \
        --bank-token "$(colend credentials issue --class bank --subject bank-core)"

Every call carries `authorization: Bearer <token>`: the partner's token names
the partner (the service takes the partner from it), the bank core's token
allows the bank's operations.
"""
import argparse
import datetime
import importlib
import os
import random
import sys
import tempfile
import time
import uuid
from zoneinfo import ZoneInfo

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def generate_stubs(out):
    """Compiles every .proto under proto/ into `out`."""
    import grpc_tools

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    files = []
    for root, _, names in os.walk(PROTO):
        files += [os.path.relpath(os.path.join(root, n), PROTO) for n in names if n.endswith(".proto")]
    rc = protoc.main(["protoc", f"-I{PROTO}", f"-I{wkt}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    for pkg in ["colend", *[os.path.join("colend", d) for d in os.listdir(os.path.join(out, "colend"))]]:
        for sub in ["", "v1"]:
            d = os.path.join(out, pkg, sub)
            if os.path.isdir(d):
                open(os.path.join(d, "__init__.py"), "a").close()
    sys.path.insert(0, out)


# Identifier rules from the national standards (see the domain reference).
ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
ID_CHECK = "10X98765432"
CC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"
CC_WEIGHTS = [1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28]


def resident_id(region, birth, seq):
    body = f"{region}{birth}{seq:03d}"
    return body + ID_CHECK[sum(int(c) * w for c, w in zip(body, ID_WEIGHTS)) % 11]


def credit_code(region, org):
    body = f"91{region}{org}"
    s = sum(CC_CHARS.index(c) * w for c, w in zip(body, CC_WEIGHTS))
    return body + CC_CHARS[(31 - s % 31) % 31]


def details(e):
    """The google.rpc.Status details of a failed call: (ErrorInfo, [field names])."""
    info, fields = None, []
    for key, value in e.trailing_metadata() or []:
        if key != "grpc-status-details-bin":
            continue
        for d in status_pb2.Status.FromString(value).details:
            if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                d.Unpack(info)
            elif d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                d.Unpack(br)
                fields += [v.field for v in br.field_violations]
    return info, fields


def refused(call, code, reason=None, field=None):
    """Runs `call`, which must fail with `code` (and ErrorInfo `reason`, and a field violation on `field`)."""
    try:
        call()
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        info, fields = details(e)
        assert info is not None, f"no ErrorInfo on {e.code()}: {e.details()}"
        if reason:
            assert info.reason == reason, (info.reason, e.details())
        if field:
            assert field in fields, (fields, e.details())
        return info
    raise SystemExit(f"expected {code} ({reason or ''} {field or ''}), the call succeeded")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", default="127.0.0.1:50051")
    ap.add_argument("--applications", type=int, default=3)
    ap.add_argument("--partner", required=True, help="the partner the partner token names")
    ap.add_argument("--partner-token", default=os.environ.get("COLEND_PARTNER_TOKEN"))
    ap.add_argument("--bank-token", default=os.environ.get("COLEND_BANK_TOKEN"))
    args = ap.parse_args()
    if not args.partner_token or not args.bank_token:
        sys.exit("--partner-token and --bank-token (or COLEND_PARTNER_TOKEN / COLEND_BANK_TOKEN) are required")

    out = tempfile.mkdtemp(prefix="colend-py-")
    generate_stubs(out)
    common = importlib.import_module("colend.common.v1.common_pb2")
    acq = importlib.import_module("colend.acquisition.v1.acquisition_service_pb2")
    acq_grpc = importlib.import_module("colend.acquisition.v1.acquisition_service_pb2_grpc")
    fund = importlib.import_module("colend.funding.v1.funding_service_pb2")
    fund_grpc = importlib.import_module("colend.funding.v1.funding_service_pb2_grpc")

    channel = grpc.insecure_channel(args.endpoint)
    acquisition = acq_grpc.AcquisitionServiceStub(channel)
    funding = fund_grpc.FundingServiceStub(channel)
    partner = args.partner
    as_partner = [("authorization", f"Bearer {args.partner_token}")]
    as_bank = [("authorization", f"Bearer {args.bank_token}")]
    cny = lambda minor: common.Money(minor_units=minor, currency_code="CNY")

    # The bank whitelists the partner (rule C12), records its reference data
    # for rules C2/C3 unless already set, and sets up the co-lending agreement.
    funding.WhitelistInstitution(fund.WhitelistInstitutionRequest(
        request_id=f"whitelist-{partner}",
        entry=fund.WhitelistEntry(institution_id=partner, kind=fund.INSTITUTION_KIND_PARTNER,
                                  effective_from="2026-01-01")), metadata=as_bank, timeout=10)
    try:
        funding.GetBankReference(fund.GetBankReferenceRequest(), metadata=as_bank, timeout=10)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        funding.SetBankReference(fund.SetBankReferenceRequest(
            request_id="python-bank-reference",
            reference=fund.BankReference(net_tier1_capital=cny(8 * 10**12), total_loan_balance=cny(10**14),
                                         as_of="2026-09-30")), metadata=as_bank, timeout=10)
    funding.UpsertAgreement(fund.UpsertAgreementRequest(
        request_id=f"agreement-{partner}",
        agreement=fund.Agreement(partner_id=partner, partner_share_bps=3000, bank_rate_bps=900,
                                 partner_rate_bps=1100, daily_quota=cny(10**12), total_quota=cny(10**13),
                                 effective_from="2026-01-01")), metadata=as_bank, timeout=10)

    # An invalid resident ID is refused with INVALID_ARGUMENT.
    bad = acq.SubmitApplicationRequest(request_id=f"{partner}-bad")
    try:
        acquisition.SubmitApplication(bad, metadata=as_partner, timeout=10)
        raise SystemExit("an empty application was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e

    rnd = random.Random(partner)
    edge_loan = None
    # The bank's business day is a date in its time zone (CN: Asia/Shanghai), not UTC.
    today = datetime.datetime.now(ZoneInfo("Asia/Shanghai")).date()
    funded = 0
    def application(i, amount):
        same = lambda minor: common.Money(minor_units=minor, currency_code=amount.currency_code)
        birth = f"{today.year - 40}0{rnd.randint(1, 9)}1{rnd.randint(0, 9)}"
        req = acq.SubmitApplicationRequest(
            request_id=f"{partner}-{i}",
            business=acq.Business(name=f"杭州测试{i}贸易有限公司",
                                  credit_code=credit_code("330106", f"MA{rnd.randint(1000000, 9999999)}"),
                                  years_in_business=5),
            legal_representative=acq.LegalRepresentative(name="周杰", resident_id=resident_id("330106", birth, rnd.randint(0, 999)),
                                                         mobile=f"139{rnd.randint(10000000, 99999999)}"),
            requested_amount=amount, term_months=12,
            purpose=acq.LOAN_PURPOSE_WORKING_CAPITAL, repayment_method=common.REPAYMENT_METHOD_EQUAL_INSTALMENT,
            partner_score=700,
            scenario=acq.ScenarioData(annual_tax_revenue=same(400_000_000), invoice_turnover_12m=same(450_000_000),
                                      turnover_trend_bps=500, open_loans_elsewhere=0),
            consent=acq.Consent(scopes=["credit_report"], channel="app", text_version="v1"),
            partner_decision=acq.PartnerDecision(approved=True, reference=f"{partner}-risk-{i}"))
        req.consent.granted_at.FromDatetime(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5))
        return req

    # Currencies: not ISO 4217 is INVALID_ARGUMENT on the currency field; a real currency other
    # than the agreement's is refused (FAILED_PRECONDITION) or never funded in another currency.
    for code in ["XXX", "ABC"]:
        req = application(f"cur-{code}", common.Money(minor_units=28_564_972, currency_code=code))
        refused(lambda: acquisition.SubmitApplication(req, metadata=as_partner, timeout=10),
                grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "requested_amount.currency_code")
    usd = application("cur-USD", common.Money(minor_units=28_564_972, currency_code="USD"))
    try:
        got = acquisition.SubmitApplication(usd, metadata=as_partner, timeout=10).application
        for msg in acquisition.WatchApplication(acq.WatchApplicationRequest(application_id=got.application_id),
                                                metadata=as_partner, timeout=60):
            got = msg.application
        for m in [got.decision.approved_amount, got.funding.principal]:
            assert m.currency_code in ("", "USD"), got
        assert acq.ApplicationStatus.Name(got.status) != "APPLICATION_STATUS_FUNDS_RESERVED", got
        print(f"USD application: {acq.ApplicationStatus.Name(got.status)} {list(got.reason_codes)}")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, (e.code(), e.details())
        info, _ = details(e)
        assert info.reason == "CURRENCY_MISMATCH" and info.metadata["expected"] == "CNY", info
        print("USD application: refused, CURRENCY_MISMATCH (the agreement is in CNY)")

    def payoff_on_disbursement_day(ids):
        """Repaid in full on the disbursement day with principal + one day's interest and fee:
        SETTLED, at most one day's interest, and the application SETTLED."""
        application_id, loan_id = ids
        loan = funding.GetLoan(fund.GetLoanRequest(loan_id=loan_id), metadata=as_bank, timeout=10).loan
        assert loan.principal.currency_code == "CNY", loan.principal
        p = loan.principal.minor_units
        basis = 365 if loan.day_count == fund.DAY_COUNT_ACT_365 else 360
        one_day_interest = p * loan.annual_rate_bps / 10_000 / basis
        one_day_fee = p * loan.annual_fee_bps / 10_000 / basis
        amount = p + round(one_day_interest) + round(one_day_fee)
        r = funding.BookRepayment(fund.BookRepaymentRequest(
            request_id=f"payoff-{loan_id}", loan_id=loan_id, amount=cny(amount), value_date=today.isoformat(),
            bank_transaction_ref=f"PY-payoff-{loan_id}"), metadata=as_bank, timeout=10)
        status = fund.LoanStatus.Name(r.loan.status)
        assert status == "LOAN_STATUS_SETTLED", (status, r.loan)
        interest = sum(a.amount.minor_units for a in r.repayment.allocations if a.component == fund.COMPONENT_INTEREST)
        assert interest <= one_day_interest + 1, (interest, one_day_interest)
        assert sum(a.amount.minor_units for a in r.repayment.allocations) == amount
        assert r.loan.bank_outstanding.minor_units == 0 and r.loan.partner_outstanding.minor_units == 0, r.loan
        for _ in range(100):
            got = acquisition.GetApplication(acq.GetApplicationRequest(application_id=application_id),
                                             metadata=as_partner, timeout=10).application
            if acq.ApplicationStatus.Name(got.status) == "APPLICATION_STATUS_SETTLED":
                break
            time.sleep(0.05)
        assert acq.ApplicationStatus.Name(got.status) == "APPLICATION_STATUS_SETTLED", got.history
        print(f"  paid off on its disbursement day with {amount / 100:.2f}: SETTLED, interest {interest / 100:.2f}"
              f" (one day: {one_day_interest / 100:.4f}), application SETTLED")
        # The bank reads it, and lists the partner's loans.
        listed = funding.ListLoans(fund.ListLoansRequest(partner_id=partner, status=fund.LOAN_STATUS_SETTLED),
                                   metadata=as_bank, timeout=10)
        assert loan_id in [l.loan_id for l in listed.loans], listed

    for i in range(args.applications):
        req = application(i, cny(15_000_000))
        app = acquisition.SubmitApplication(req, metadata=as_partner, timeout=10).application

        # Follow it live.
        final = None
        for msg in acquisition.WatchApplication(acq.WatchApplicationRequest(application_id=app.application_id),
                                                metadata=as_partner, timeout=60):
            final = msg.application
            name = acq.ApplicationStatus.Name(final.status)
            if name in ("APPLICATION_STATUS_FUNDS_RESERVED", "APPLICATION_STATUS_DECLINED",
                        "APPLICATION_STATUS_KYC_REJECTED", "APPLICATION_STATUS_FUNDING_REJECTED",
                        "APPLICATION_STATUS_FAILED"):
                break
        status = acq.ApplicationStatus.Name(final.status)
        print(f"{app.application_id}: {status} {list(final.reason_codes)}")
        if status != "APPLICATION_STATUS_FUNDS_RESERVED":
            continue
        bank, part = final.funding.bank_amount.minor_units, final.funding.partner_amount.minor_units
        assert bank + part == final.decision.approved_amount.minor_units
        assert part * 10000 >= (bank + part) * 3000

        # A value date before the reservation or years ahead is refused.
        for bad_date in ["2019-06-01", "2031-01-01"]:
            refused(lambda: funding.BookDisbursement(fund.BookDisbursementRequest(
                request_id=f"disburse-{bad_date}-{final.funding.loan_id}", loan_id=final.funding.loan_id,
                value_date=bad_date, bank_transaction_ref=f"PY-{i}-{partner}-{bad_date}"), metadata=as_bank,
                timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "value_date")

        # The bank disburses; the partner sees it in the history.
        funding.BookDisbursement(fund.BookDisbursementRequest(
            request_id=f"disburse-{final.funding.loan_id}", loan_id=final.funding.loan_id,
            value_date=today.isoformat(), bank_transaction_ref=f"PY-{i}-{partner}"), metadata=as_bank, timeout=10)
        for _ in range(100):
            got = acquisition.GetApplication(acq.GetApplicationRequest(application_id=app.application_id),
                                             metadata=as_partner, timeout=10).application
            if acq.ApplicationStatus.Name(got.status) == "APPLICATION_STATUS_DISBURSED":
                break
            time.sleep(0.05)
        history = [acq.ApplicationStatus.Name(h.status).replace("APPLICATION_STATUS_", "") for h in got.history]
        print(f"  history: {' -> '.join(history)}")
        assert history[-1] == "DISBURSED", history
        funded += 1
        edge_loan = (app.application_id, final.funding.loan_id)

    if edge_loan:
        payoff_on_disbursement_day(edge_loan)

    if funded == 0:
        raise SystemExit("no application was funded")
    print(f"python partner client: {funded} of {args.applications} applications funded and disbursed")


if __name__ == "__main__":
    main()
