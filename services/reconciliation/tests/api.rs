//! Reconciliation API tests against a real server on port 0, on both backends.
// Hand-computed amounts are written yuan_fen (12_345_67 is CNY 12,345.67).
#![allow(clippy::inconsistent_digit_grouping)]
use colend_contracts::common::v1::Money;
use colend_contracts::reconciliation::v1::{
    self as pb, reconciliation_service_client::ReconciliationServiceClient,
};
use colend_platform::time::{Clock, parse_time_zone};
use colend_reconciliation::app::{Settings, rec_pb};
use colend_reconciliation::domain::{Book, file};
use colend_testkit::{BOTH, Backend, TestServer, as_bank, reason, violated_fields};
use futures::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

type Client = ReconciliationServiceClient<Channel>;

fn cny(m: i64) -> Option<Money> {
    Some(Money {
        minor_units: m,
        currency_code: "CNY".into(),
    })
}

fn rec(kind: pb::RecordKind, tx: &str, amount: i64, partner: i64) -> pb::Record {
    pb::Record {
        kind: kind as i32,
        transaction_id: tx.into(),
        loan_id: "loan_1".into(),
        value_date: "2026-11-23".into(),
        amount: cny(amount),
        bank_portion: cny(amount - partner),
        partner_portion: cny(partner),
        ..Default::default()
    }
}

fn count(classes: &[pb::ClassSummary], k: pb::BreakClass) -> i64 {
    classes
        .iter()
        .find(|c| c.break_class == k as i32)
        .map(|c| c.count)
        .unwrap_or(0)
}

fn owed(run: &pb::Run) -> i64 {
    run.settlement
        .as_ref()
        .and_then(|s| s.partner_owes_bank.as_ref())
        .map(|m| m.minor_units)
        .unwrap_or(i64::MIN)
}

/// Staged ingestion, a run, paging, field-level validation.
async fn staged(c: &mut Client) {
    use pb::RecordKind::{Disbursement as D, Repayment as R};
    let ingest = |rid: &str, side: pb::Side, records: Vec<pb::Record>| {
        as_bank(pb::IngestRecordsRequest {
            request_id: rid.into(),
            partner_id: "p1".into(),
            business_date: "2026-11-23".into(),
            side: side as i32,
            records,
        })
    };
    let bank = vec![
        rec(D, "d1", 1_000_000, 300_000),
        rec(R, "r1", 90_000, 27_500),
        rec(R, "r2", 50_000, 15_000),
        rec(R, "r3", 10_000, 3_000),
        rec(R, "r3", 10_000, 3_000),
    ];
    let partner = vec![
        rec(D, "d1", 1_000_000, 300_000),
        rec(R, "r1", 90_000, 27_500),
        rec(R, "r2", 50_002, 15_002),
        rec(R, "r3", 10_000, 3_000),
        rec(R, "r4", 7_000, 2_100),
    ];
    let n = |r: Result<tonic::Response<pb::IngestRecordsResponse>, tonic::Status>| {
        r.unwrap().into_inner().accepted
    };
    assert_eq!(
        n(c.ingest_records(ingest("b1", pb::Side::Bank, bank.clone()))
            .await),
        5
    );
    // A replayed batch is not loaded twice.
    assert_eq!(
        n(c.ingest_records(ingest("b1", pb::Side::Bank, bank)).await),
        5
    );
    assert_eq!(
        n(c.ingest_records(ingest("p1", pb::Side::Partner, partner))
            .await),
        5
    );

    let run = c
        .run_reconciliation(as_bank(pb::RunReconciliationRequest {
            request_id: "run1".into(),
            partner_id: "p1".into(),
            business_date: "2026-11-23".into(),
            options: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!((run.bank_records, run.partner_records), (5, 5));
    assert_eq!(count(&run.classes, pb::BreakClass::Matched), 3);
    assert_eq!(count(&run.classes, pb::BreakClass::AmountMismatch), 1);
    assert_eq!(count(&run.classes, pb::BreakClass::Duplicate), 1);
    assert_eq!(count(&run.classes, pb::BreakClass::MissingOnBankSide), 1);
    assert_eq!(run.open_breaks, 3);
    // The partner owes its share of the disbursement less its share of the
    // repayments the bank collected.
    assert_eq!(owed(&run), 300_000 - 27_500 - 3_000);

    let list = |token: String| {
        as_bank(pb::ListBreaksRequest {
            run_id: run.run_id.clone(),
            page_size: 2,
            page_token: token,
            filter: None,
        })
    };
    let page1 = c
        .list_breaks(list(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.breaks.len(), 2);
    let page2 = c
        .list_breaks(list(page1.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page2.breaks.len(), 1);
    assert!(page2.next_page_token.is_empty());
    let mismatch = page1
        .breaks
        .iter()
        .chain(&page2.breaks)
        .find(|b| b.break_class == pb::BreakClass::AmountMismatch as i32)
        .unwrap();
    assert_eq!(mismatch.components, ["amount"]);
    assert_eq!(mismatch.bank_record.as_ref().unwrap().transaction_id, "r2");
    assert_eq!(mismatch.partner_amount, cny(50_002));
    assert_eq!(mismatch.status, pb::BreakStatus::Open as i32);

    // Malformed records are named field by field; nothing of the batch is stored.
    let mut bad = rec(R, "", 100, 30);
    bad.bank_portion = cny(1);
    let e = c
        .ingest_records(ingest("b2", pb::Side::Bank, vec![rec(R, "ok", 1, 0), bad]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let f = violated_fields(&e);
    assert!(
        f.contains(&"records[1].transaction_id".to_string())
            && f.contains(&"records[1].partner_portion".to_string()),
        "{f:?}"
    );
}

/// Streams two generated files (with planted breaks) in interleaved batches.
async fn stream_files(
    c: &mut Client,
    start: pb::ReconcileStreamStart,
    bank: &str,
    partner: &str,
) -> Result<pb::Run, tonic::Status> {
    let mut msgs = vec![pb::ReconcileStreamRequest {
        item: Some(pb::reconcile_stream_request::Item::Start(start)),
    }];
    let mut readers = [
        (pb::Side::Bank, file::FileReader::new(bank.as_bytes())),
        (pb::Side::Partner, file::FileReader::new(partner.as_bytes())),
    ];
    let mut done = [false, false];
    while !(done[0] && done[1]) {
        for (i, (side, r)) in readers.iter_mut().enumerate() {
            let mut batch = pb::RecordBatch {
                side: *side as i32,
                records: vec![],
            };
            while batch.records.len() < 500 {
                let Some((line, row)) = r.next_row() else {
                    done[i] = true;
                    break;
                };
                match row {
                    Ok((rec, cur)) => batch.records.push(rec_pb(&rec, &cur)),
                    Err(reason) => msgs.push(pb::ReconcileStreamRequest {
                        item: Some(pb::reconcile_stream_request::Item::Malformed(
                            pb::RejectedRow {
                                side: *side as i32,
                                line,
                                reason,
                            },
                        )),
                    }),
                }
            }
            msgs.push(pb::ReconcileStreamRequest {
                item: Some(pb::reconcile_stream_request::Item::Batch(batch)),
            });
        }
    }
    c.reconcile_stream(as_bank(futures::stream::iter(msgs)))
        .await
        .map(|r| r.into_inner().run.unwrap())
}

fn generated(n: usize, every: usize, seed: u64, date: &str) -> (file::Expected, String, String) {
    let (mut bank, mut partner) = (String::new(), String::new());
    let day = colend_reconciliation::domain::parse_day(date).unwrap();
    let e = file::generate(n, seed, day, every, |b, row| {
        let s = if b == Book::Bank {
            &mut bank
        } else {
            &mut partner
        };
        s.push_str(row);
        s.push('\n');
    });
    (e, bank, partner)
}

fn start_msg(
    rid: &str,
    partner: &str,
    date: &str,
    options: pb::RunOptions,
) -> pb::ReconcileStreamStart {
    pb::ReconcileStreamStart {
        request_id: rid.into(),
        partner_id: partner.into(),
        business_date: date.into(),
        options: Some(options),
    }
}

fn assert_counts(run: &pb::Run, want: &[(&'static str, i64)]) {
    for k in 1..=9 {
        let class = pb::BreakClass::try_from(k).unwrap();
        let name = class.as_str_name().trim_start_matches("BREAK_CLASS_");
        let n = want
            .iter()
            .find(|(w, _)| *w == name)
            .map(|x| x.1)
            .unwrap_or(0);
        assert_eq!(count(&run.classes, class), n, "{name}");
    }
}

/// Planted breaks of every class come out exactly; settlement, exports,
/// idempotency and dry runs.
async fn streamed(c: &mut Client) {
    let date = "2026-11-20";
    let (e, bank, partner) = generated(3_000, 100, 11, date);
    let opts = pb::RunOptions::default();
    let run = stream_files(c, start_msg("s1", "p2", date, opts), &bank, &partner)
        .await
        .unwrap();
    assert_counts(&run, &e.exact);
    assert_eq!(run.bank_records, e.bank_records);
    assert_eq!(run.partner_records, e.partner_records);
    assert_eq!(run.rejected_rows, e.bank_rejected + e.partner_rejected);
    assert!(
        run.rejected
            .iter()
            .all(|r| r.line > 1 && !r.reason.is_empty())
    );
    assert_eq!(owed(&run), e.exact_partner_owes_bank);
    assert_eq!((run.matched_one_to_many, run.matched_many_to_one), (30, 30));

    // Every break, streamed, once.
    let mut breaks = c
        .stream_breaks(as_bank(pb::StreamBreaksRequest {
            run_id: run.run_id.clone(),
            filter: None,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(m) = breaks.next().await {
        n += m.unwrap().breaks.len() as i64;
    }
    assert_eq!(n, run.open_breaks);
    // Filtered by class.
    let dups = c
        .list_breaks(as_bank(pb::ListBreaksRequest {
            run_id: run.run_id.clone(),
            page_size: 500,
            page_token: String::new(),
            filter: Some(pb::BreakFilter {
                break_class: pb::BreakClass::Duplicate as i32,
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        dups.breaks.len() as i64,
        count(&run.classes, pb::BreakClass::Duplicate)
    );

    // The settlement lines net to the settlement, to the cent.
    let mut lines = c
        .stream_settlement_lines(as_bank(pb::StreamSettlementLinesRequest {
            run_id: run.run_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let (mut net, mut nlines) = (0i64, 0i64);
    while let Some(m) = lines.next().await {
        for l in m.unwrap().lines {
            let v = l.owed.unwrap().minor_units;
            net += if l.owed_by == pb::Side::Partner as i32 {
                v
            } else {
                -v
            };
            nlines += 1;
        }
    }
    assert_eq!(net, e.exact_partner_owes_bank);
    assert_eq!(nlines, run.settlement.as_ref().unwrap().lines);

    // Replay: the same run; the same id with other content: refused.
    let again = stream_files(c, start_msg("s1", "p2", date, opts), &bank, &partner)
        .await
        .unwrap();
    assert_eq!(again.run_id, run.run_id);
    let err = stream_files(c, start_msg("s1", "p2", date, opts), &bank, &bank)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(&err), "IDEMPOTENCY_KEY_REUSED");

    // A dry run with tolerances: the drift and T+1 items match, nothing stored.
    let tolerant = pb::RunOptions {
        amount_tolerance_minor: 1,
        value_date_tolerance_days: 1,
        dry_run: true,
        three_way: false,
    };
    let dry = stream_files(c, start_msg("s2", "p2", date, tolerant), &bank, &partner)
        .await
        .unwrap();
    assert_counts(&dry, &e.tolerant);
    assert_eq!(owed(&dry), e.tolerant_partner_owes_bank);
    assert!(dry.run_id.is_empty());
    assert_eq!(dry.matched_within_tolerance, 60);
    let open = c
        .list_breaks(as_bank(pb::ListBreaksRequest {
            run_id: String::new(),
            page_size: 500,
            page_token: String::new(),
            filter: Some(pb::BreakFilter {
                partner_id: "p2".into(),
                status: pb::BreakStatus::Open as i32,
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.breaks.len() as i64, run.open_breaks);

    // A stream that does not start with a start message is refused.
    let e = c
        .reconcile_stream(as_bank(futures::stream::iter(vec![
            pb::ReconcileStreamRequest {
                item: Some(pb::reconcile_stream_request::Item::Batch(
                    pb::RecordBatch::default(),
                )),
            },
        ])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&e), ["start"]);
}

/// Day 1 leaves breaks; day 2 brings the late records; day 1's breaks close.
/// A break resolved by hand records who and why.
async fn rolling(c: &mut Client) {
    use pb::RecordKind::Repayment as R;
    let day = |rid: &str, date: &str, bank: Vec<pb::Record>, partner: Vec<pb::Record>| {
        let mut msgs = vec![pb::ReconcileStreamRequest {
            item: Some(pb::reconcile_stream_request::Item::Start(start_msg(
                rid,
                "p3",
                date,
                pb::RunOptions::default(),
            ))),
        }];
        for (side, records) in [(pb::Side::Bank, bank), (pb::Side::Partner, partner)] {
            msgs.push(pb::ReconcileStreamRequest {
                item: Some(pb::reconcile_stream_request::Item::Batch(pb::RecordBatch {
                    side: side as i32,
                    records,
                })),
            });
        }
        as_bank(futures::stream::iter(msgs))
    };
    let on = |mut r: pb::Record, date: &str| {
        r.value_date = date.into();
        r
    };
    let d1 = "2026-11-21";
    let d2 = "2026-11-22";
    let run1 = c
        .reconcile_stream(day(
            "day1",
            d1,
            vec![
                on(rec(R, "a", 1_000, 300), d1),
                on(rec(R, "late", 2_000, 600), d1),
                on(rec(R, "gone", 500, 150), d1),
            ],
            vec![
                on(rec(R, "a", 1_000, 300), d1),
                on(rec(R, "early", 700, 210), d1),
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run1.open_breaks, 3);
    let run2 = c
        .reconcile_stream(day(
            "day2",
            d2,
            vec![
                on(rec(R, "b", 4_000, 1_200), d2),
                on(rec(R, "early", 700, 210), d1),
            ],
            vec![
                on(rec(R, "b", 4_000, 1_200), d2),
                on(rec(R, "late", 2_000, 600), d1),
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run2.resolved_earlier_breaks, 2);
    assert_eq!(run2.open_breaks, 0);
    assert_eq!(count(&run2.classes, pb::BreakClass::Matched), 3);
    // Settlement of day 2 includes the late pair: the bank owes the
    // partner's portions of b, late and early.
    assert_eq!(owed(&run2), -(1_200 + 600 + 210));

    let day1 = c
        .list_breaks(as_bank(pb::ListBreaksRequest {
            run_id: run1.run_id.clone(),
            page_size: 10,
            page_token: String::new(),
            filter: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .breaks;
    let closed: Vec<_> = day1
        .iter()
        .filter(|b| b.status == pb::BreakStatus::Resolved as i32)
        .collect();
    assert_eq!(closed.len(), 2);
    for b in &closed {
        let r = b.resolution.as_ref().unwrap();
        assert_eq!(r.resolved_by_run_id, run2.run_id);
        assert_eq!(r.resolved_by, "colend-reconciliation");
    }
    let gone = day1.iter().find(|b| b.transaction_id == "gone").unwrap();
    assert_eq!(gone.status, pb::BreakStatus::Open as i32);
    assert_eq!(
        gone.break_class,
        pb::BreakClass::MissingOnPartnerSide as i32
    );
    assert!(gone.age_days >= 0);

    // Resolved by hand, with who and why; a second time is refused; a
    // replay returns the first answer.
    let resolve = |rid: &str| {
        as_bank(pb::ResolveBreakRequest {
            request_id: rid.into(),
            break_id: gone.break_id.clone(),
            resolved_by: "ops.wang".into(),
            reason: "written off: partner confirmed it never collected".into(),
            settle: false,
        })
    };
    let b = c
        .resolve_break(resolve("res1"))
        .await
        .unwrap()
        .into_inner()
        .r#break
        .unwrap();
    assert_eq!(b.status, pb::BreakStatus::Resolved as i32);
    assert_eq!(b.resolution.as_ref().unwrap().resolved_by, "ops.wang");
    let replay = c
        .resolve_break(resolve("res1"))
        .await
        .unwrap()
        .into_inner()
        .r#break
        .unwrap();
    assert_eq!(replay, b);
    let e = c.resolve_break(resolve("res2")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = c
        .resolve_break(as_bank(pb::ResolveBreakRequest {
            request_id: "res3".into(),
            break_id: "nope".into(),
            resolved_by: String::new(),
            reason: "x".into(),
            settle: false,
        }))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&e), ["resolved_by"]);
    let e = c
        .get_run(as_bank(pb::GetRunRequest {
            run_id: "run_nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// A demo day whose settlement is computed by hand.
async fn settlement_by_hand(c: &mut Client) {
    use pb::RecordKind::{Disbursement as D, Fee as F, Repayment as R};
    let date = "2026-11-23";
    let mut partner_collected = rec(R, "r-p", 12_345_67, 3_703_70);
    partner_collected.collected_by = pb::Side::Partner as i32;
    partner_collected.components = Some(pb::Components {
        principal: 12_000_00,
        interest: 300_00,
        fee: 45_67,
        penalty: 0,
    });
    let records = vec![
        // The bank advanced 500,000.00; the partner's 30% is 150,000.00.
        rec(D, "d-1", 500_000_00, 150_000_00),
        // The bank collected 10,500.00; it owes the partner 3,150.00.
        rec(R, "r-b", 10_500_00, 3_150_00),
        // The partner collected 12,345.67; it owes the bank 8,641.97.
        partner_collected,
        // A fee the bank collected: it owes the partner 40.00.
        rec(F, "f-1", 100_00, 40_00),
    ];
    let msgs = vec![
        pb::ReconcileStreamRequest {
            item: Some(pb::reconcile_stream_request::Item::Start(start_msg(
                "hand",
                "p4",
                date,
                pb::RunOptions::default(),
            ))),
        },
        pb::ReconcileStreamRequest {
            item: Some(pb::reconcile_stream_request::Item::Batch(pb::RecordBatch {
                side: pb::Side::Bank as i32,
                records: records.clone(),
            })),
        },
        pb::ReconcileStreamRequest {
            item: Some(pb::reconcile_stream_request::Item::Batch(pb::RecordBatch {
                side: pb::Side::Partner as i32,
                records,
            })),
        },
    ];
    let run = c
        .reconcile_stream(as_bank(futures::stream::iter(msgs)))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.open_breaks, 0);
    // 150,000.00 + 8,641.97 - 3,150.00 - 40.00 = 155,451.97
    assert_eq!(owed(&run), 155_451_97);
    let s = run.settlement.unwrap();
    assert_eq!(s.partner_owes_gross, cny(158_641_97));
    assert_eq!(s.bank_owes_gross, cny(3_190_00));
    assert_eq!(s.lines, 4);
}

/// One streamed day of `partner`: the bank's records, then the partner's.
async fn stream_day(
    c: &mut Client,
    rid: &str,
    partner: &str,
    date: &str,
    bank: Vec<pb::Record>,
    partner_records: Vec<pb::Record>,
) -> Result<pb::Run, tonic::Status> {
    let options = pb::RunOptions::default();
    stream_day_with(c, rid, partner, date, options, bank, partner_records).await
}

/// [`stream_day`] with run options.
async fn stream_day_with(
    c: &mut Client,
    rid: &str,
    partner: &str,
    date: &str,
    options: pb::RunOptions,
    bank: Vec<pb::Record>,
    partner_records: Vec<pb::Record>,
) -> Result<pb::Run, tonic::Status> {
    let mut msgs = vec![pb::ReconcileStreamRequest {
        item: Some(pb::reconcile_stream_request::Item::Start(start_msg(
            rid, partner, date, options,
        ))),
    }];
    for (side, records) in [(pb::Side::Bank, bank), (pb::Side::Partner, partner_records)] {
        msgs.push(pb::ReconcileStreamRequest {
            item: Some(pb::reconcile_stream_request::Item::Batch(pb::RecordBatch {
                side: side as i32,
                records,
            })),
        });
    }
    c.reconcile_stream(as_bank(futures::stream::iter(msgs)))
        .await
        .map(|r| r.into_inner().run.unwrap())
}

/// Every break a run found, as it stands now.
async fn breaks_of(c: &mut Client, run_id: &str) -> Vec<pb::Break> {
    c.list_breaks(as_bank(pb::ListBreaksRequest {
        run_id: run_id.into(),
        page_size: 100,
        page_token: String::new(),
        filter: None,
    }))
    .await
    .unwrap()
    .into_inner()
    .breaks
}

/// The settlement lines of a run, netted (positive: the partner owes the bank).
async fn lines_net(c: &mut Client, run_id: &str) -> (i64, i64) {
    let mut lines = c
        .stream_settlement_lines(as_bank(pb::StreamSettlementLinesRequest {
            run_id: run_id.into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let (mut net, mut n) = (0i64, 0i64);
    while let Some(m) = lines.next().await {
        for l in m.unwrap().lines {
            let v = l.owed.unwrap().minor_units;
            net += if l.owed_by == pb::Side::Partner as i32 {
                v
            } else {
                -v
            };
            n += 1;
        }
    }
    (net, n)
}

/// Day 1 finds a break of every bank–partner class; day 2's records make
/// each of them match: day 2 resolves them and settles each once, from the
/// bank's record (the duplicate's transaction settled on day 1: the bank's
/// copy of day 2 clears it, settling nothing); reconciling day 2 again
/// without those records reopens them, and with them settles them again in
/// the new run only; day 1 can no longer be reconciled again, with its
/// files corrected or not; day 3 counts none of them again.
async fn rolling_every_class(c: &mut Client) {
    use pb::RecordKind::{Disbursement as D, Repayment as R};
    let (d1, d2, d3) = ("2026-11-24", "2026-11-25", "2026-11-26");
    let on = |mut r: pb::Record, date: &str| {
        r.value_date = date.into();
        r
    };
    // Bank collected: the bank owes the partner the partner's portion.
    let am = on(rec(R, "am", 10_000_00, 3_000_00), d1);
    let mb = on(rec(R, "mb", 2_000_00, 600_00), d1);
    let mp = on(rec(R, "mp", 4_000_00, 1_200_00), d1);
    let dup = on(rec(R, "dup", 500_00, 150_00), d1);
    let dt = on(rec(R, "dt", 800_00, 240_00), d1);
    let sr = on(rec(R, "sr", 1_000_01, 300_01), d1);
    // The bank advanced: the partner owes its portion.
    let at = on(rec(D, "at", 50_000_00, 15_000_00), d1);
    let clean = on(rec(R, "clean", 100_00, 30_00), d1);
    let mut am_p = am.clone();
    am_p.amount = cny(10_000_05);
    am_p.bank_portion = cny(7_000_05);
    let dt_p = on(dt.clone(), d2);
    let mut sr_p = sr.clone();
    sr_p.partner_portion = cny(300_00);
    sr_p.bank_portion = cny(700_01);
    let mut at_p = at.clone();
    at_p.loan_id = "loan_9".into();
    let bank1 = vec![
        am.clone(),
        mp.clone(),
        dup.clone(),
        dt.clone(),
        sr.clone(),
        at.clone(),
        clean.clone(),
    ];
    let partner1 = vec![
        am_p,
        mb.clone(),
        dup.clone(),
        dup.clone(),
        dt_p,
        sr_p,
        at_p,
        clean.clone(),
    ];
    let run1 = stream_day(c, "e-d1", "p5", d1, bank1.clone(), partner1.clone())
        .await
        .unwrap();
    assert_counts(
        &run1,
        &[
            ("MATCHED", 2),
            ("AMOUNT_MISMATCH", 1),
            ("MISSING_ON_BANK_SIDE", 1),
            ("MISSING_ON_PARTNER_SIDE", 1),
            ("DUPLICATE", 1),
            ("DATE_OFFSET", 1),
            ("SPLIT_ROUNDING", 1),
            ("ATTRIBUTE_MISMATCH", 1),
        ],
    );
    // Day 1 settles its two matches (clean, and dup's first booking) only.
    assert_eq!(owed(&run1), -(30_00 + 150_00));

    // Day 2: each side sends what makes its breaks match (the bank books
    // mb; its file holds dup again, an overlapping export; the partner
    // re-sends the others corrected), plus a clean pair of the day.
    let today = on(rec(R, "today", 300_00, 90_00), d2);
    let fixes = (
        vec![mb.clone(), dup.clone(), today.clone()],
        vec![
            am.clone(),
            mp.clone(),
            dt.clone(),
            sr.clone(),
            at.clone(),
            today.clone(),
        ],
    );
    // Six breaks settle; dup's 150.00 settled on day 1 and not again.
    let resolved_owed = 15_000_00 - (3_000_00 + 600_00 + 1_200_00 + 240_00 + 300_01);
    let run2 = stream_day(c, "e-d2", "p5", d2, fixes.0.clone(), fixes.1.clone())
        .await
        .unwrap();
    assert_eq!(run2.resolved_earlier_breaks, 7);
    assert_eq!(run2.replaced_earlier_breaks, 0);
    assert_eq!(run2.open_breaks, 0);
    assert_eq!(count(&run2.classes, pb::BreakClass::Matched), 7);
    assert_eq!(owed(&run2), resolved_owed - 90_00);
    assert_eq!(lines_net(c, &run2.run_id).await, (resolved_owed - 90_00, 7));
    for b in breaks_of(c, &run1.run_id).await {
        let r = b.resolution.as_ref().unwrap();
        assert_eq!(
            b.status,
            pb::BreakStatus::Resolved as i32,
            "{}",
            b.transaction_id
        );
        assert_eq!(r.resolved_by_run_id, run2.run_id);
        let settles = b.transaction_id != "dup";
        assert_eq!(r.settles, settles, "{}", b.transaction_id);
        let by = if settles { run2.run_id.as_str() } else { "" };
        assert_eq!(r.settled_by_run_id, by, "{}", b.transaction_id);
    }

    // Day 2 reconciled again without the fixes: the new run takes the day
    // over, and the breaks day 2 had resolved are open again.
    let run2b = stream_day(
        c,
        "e-d2b",
        "p5",
        d2,
        vec![today.clone()],
        vec![today.clone()],
    )
    .await
    .unwrap();
    assert_eq!(run2b.resolved_earlier_breaks, 0);
    assert_eq!(owed(&run2b), -90_00);
    let day1 = breaks_of(c, &run1.run_id).await;
    assert!(
        day1.iter()
            .all(|b| b.status == pb::BreakStatus::Open as i32 && b.resolution.is_none())
    );
    // ... and once more with them: settled in this run, once.
    let run2c = stream_day(c, "e-d2c", "p5", d2, fixes.0, fixes.1)
        .await
        .unwrap();
    assert_eq!(run2c.resolved_earlier_breaks, 7);
    assert_eq!(owed(&run2c), resolved_owed - 90_00);
    for b in breaks_of(c, &run1.run_id).await {
        let by = if b.transaction_id == "dup" {
            ""
        } else {
            run2c.run_id.as_str()
        };
        assert_eq!(b.resolution.as_ref().unwrap().settled_by_run_id, by);
    }

    // Day 1 again, now that day 2 has closed its breaks and settled them:
    // with the partner's corrected file the pairs would match inside day 1
    // and settle a second time; with the original files day 1 would open
    // breaks again for transactions already settled. Refused either way,
    // dry run included, naming the run that took the day further; nothing
    // changes.
    let corrected = vec![
        am.clone(),
        mb.clone(),
        dup.clone(),
        dt.clone(),
        sr.clone(),
        at.clone(),
        clean.clone(),
    ];
    let dry = pb::RunOptions {
        dry_run: true,
        ..Default::default()
    };
    for (rid, partner1, options) in [
        ("e-d1-fixed", corrected.clone(), pb::RunOptions::default()),
        ("e-d1-again", partner1.clone(), pb::RunOptions::default()),
        ("e-d1-dry", corrected, dry),
    ] {
        let e = stream_day_with(c, rid, "p5", d1, options, bank1.clone(), partner1)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{rid}: {e:?}");
        assert_eq!(reason(&e), "INVALID_STATE", "{rid}");
        assert!(
            e.message().contains(&run2c.run_id) && e.message().contains(d2),
            "{rid}: {}",
            e.message()
        );
    }
    for b in breaks_of(c, &run1.run_id).await {
        let r = b.resolution.as_ref().unwrap();
        assert_eq!(r.resolved_by_run_id, run2c.run_id, "{}", b.transaction_id);
    }
    let settled = c
        .get_run(as_bank(pb::GetRunRequest {
            run_id: run2c.run_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(owed(&settled), resolved_owed - 90_00);
    // Day 3 counts none of them again.
    let run3 = stream_day(c, "e-d3", "p5", d3, vec![], vec![])
        .await
        .unwrap();
    assert_eq!(run3.resolved_earlier_breaks, 0);
    assert_eq!(owed(&run3), 0);
    assert_eq!(run3.settlement.as_ref().unwrap().lines, 0);
}

/// A run is in one currency: a run in another currency of the same partner
/// and day neither supersedes nor re-matches the first currency's breaks.
async fn currencies_apart(c: &mut Client) {
    use pb::RecordKind::Repayment as R;
    let usd = |mut r: pb::Record| {
        for m in [&mut r.amount, &mut r.bank_portion, &mut r.partner_portion] {
            if let Some(m) = m.as_mut() {
                m.currency_code = "USD".into();
            }
        }
        r
    };
    let m = rec(R, "m", 1_000_00, 300_00);
    let cny1 = stream_day(c, "cur-1", "p8", "2026-11-23", vec![m.clone()], vec![])
        .await
        .unwrap();
    assert_eq!(cny1.open_breaks, 1);
    // USD on the same day: its own run; the CNY break stays open.
    let usd1 = stream_day(c, "cur-2", "p8", "2026-11-23", vec![], vec![usd(m.clone())])
        .await
        .unwrap();
    assert_eq!(usd1.open_breaks, 1);
    assert_eq!(
        breaks_of(c, &cny1.run_id).await[0].status,
        pb::BreakStatus::Open as i32
    );
    // USD the next day: the USD break is examined, never the CNY one.
    let usd2 = stream_day(c, "cur-3", "p8", "2026-11-24", vec![usd(m.clone())], vec![])
        .await
        .unwrap();
    assert_eq!(usd2.resolved_earlier_breaks, 1);
    let s = usd2.settlement.as_ref().unwrap();
    assert_eq!(s.partner_owes_bank.as_ref().unwrap().currency_code, "USD");
    assert_eq!(owed(&usd2), -300_00);
    assert_eq!(
        breaks_of(c, &cny1.run_id).await[0].status,
        pb::BreakStatus::Open as i32
    );
    let cny2 = stream_day(c, "cur-4", "p8", "2026-11-24", vec![], vec![m.clone()])
        .await
        .unwrap();
    assert_eq!(cny2.resolved_earlier_breaks, 1);
    assert_eq!(owed(&cny2), -300_00);

    // A day reconciled again without records is run in the currency of its
    // latest run: the USD run of the day is superseded, in USD.
    let usd3 = stream_day(c, "cur-5", "p8", "2026-11-25", vec![usd(m)], vec![])
        .await
        .unwrap();
    assert_eq!(usd3.open_breaks, 1);
    let empty = stream_day(c, "cur-6", "p8", "2026-11-25", vec![], vec![])
        .await
        .unwrap();
    let s = empty.settlement.as_ref().unwrap();
    assert_eq!(s.partner_owes_bank.as_ref().unwrap().currency_code, "USD");
    let b = &breaks_of(c, &usd3.run_id).await[0];
    assert_eq!(b.status, pb::BreakStatus::Resolved as i32);
    assert_eq!(
        b.resolution.as_ref().unwrap().resolved_by_run_id,
        empty.run_id
    );
}

/// Totals that do not fit in int64 minor units refuse the run with a
/// field violation, never wrap.
async fn overflow_is_refused(c: &mut Client) {
    use pb::RecordKind::Repayment as R;
    let big = |tx: &str| {
        let mut r = rec(R, tx, i64::MAX, i64::MAX - 1);
        r.bank_portion = cny(1);
        r
    };
    let e = stream_day(
        c,
        "big",
        "p7",
        "2026-11-23",
        vec![big("a"), big("b")],
        vec![big("a"), big("b")],
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(reason(&e), "INVALID_ARGUMENT");
    assert_eq!(violated_fields(&e), ["records"]);
}

/// Ages and the day a hand resolution settles from are business days in
/// Asia/Shanghai, not UTC dates. The clock stands at 00:30 on 1 December in
/// Shanghai, still 30 November in UTC.
async fn hand_settlement_on_the_business_day(c: &mut Client, clock: &Clock) {
    use pb::RecordKind::Repayment as R;
    let at = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    };
    clock.set(at("2026-11-30T16:30:00Z"));
    let day0 = "2026-11-29";
    let on = |mut r: pb::Record| {
        r.value_date = day0.into();
        r
    };
    let bank_only = on(rec(R, "h1", 2_000_00, 600_00));
    let run0 = stream_day(
        c,
        "h-d0",
        "p6",
        day0,
        vec![bank_only, on(rec(R, "h3", 100_00, 30_00))],
        vec![
            on(rec(R, "h2", 700_00, 210_00)),
            on(rec(R, "h3", 100_00, 30_00)),
            on(rec(R, "h3", 100_00, 30_00)),
        ],
    )
    .await
    .unwrap();
    let breaks = breaks_of(c, &run0.run_id).await;
    let by_tx = |tx: &str, class: pb::BreakClass| {
        breaks
            .iter()
            .find(|b| b.transaction_id == tx && b.break_class == class as i32)
            .unwrap()
            .clone()
    };
    let h1 = by_tx("h1", pb::BreakClass::MissingOnPartnerSide);
    let h2 = by_tx("h2", pb::BreakClass::MissingOnBankSide);
    let h3 = by_tx("h3", pb::BreakClass::Duplicate);
    // 29 November to 1 December in Shanghai: 2 days (UTC would say 1).
    assert_eq!(h1.age_days, 2);
    let resolve = |rid: &str, b: &pb::Break| {
        as_bank(pb::ResolveBreakRequest {
            request_id: rid.into(),
            break_id: b.break_id.clone(),
            resolved_by: "ops.li".into(),
            reason: "partner confirmed the bank's record".into(),
            settle: true,
        })
    };
    // Nothing to settle from: refused, and the break stays open.
    for (rid, b) in [("hs-2", &h2), ("hs-3", &h3)] {
        let e = c.resolve_break(resolve(rid, b)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert_eq!(reason(&e), "INVALID_STATE");
    }
    let b = c
        .resolve_break(resolve("hs-1", &h1))
        .await
        .unwrap()
        .into_inner()
        .r#break
        .unwrap();
    let r = b.resolution.as_ref().unwrap();
    assert!(r.settles);
    assert!(r.settled_by_run_id.is_empty(), "waits for a run");
    assert_eq!(b.age_days, 2);
    // A run of 30 November (the UTC date) does not settle it: the
    // resolution's business day is 1 December.
    let nov30 = stream_day(c, "h-d1", "p6", "2026-11-30", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(nov30.settled_hand_resolved_breaks, 0);
    assert_eq!(owed(&nov30), 0);
    let dec1 = stream_day(c, "h-d2", "p6", "2026-12-01", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(dec1.settled_hand_resolved_breaks, 1);
    assert_eq!(owed(&dec1), -600_00);
    assert_eq!(lines_net(c, &dec1.run_id).await, (-600_00, 1));
    let h1_now = breaks_of(c, &run0.run_id)
        .await
        .into_iter()
        .find(|b| b.break_id == h1.break_id)
        .unwrap();
    assert_eq!(
        h1_now.resolution.as_ref().unwrap().settled_by_run_id,
        dec1.run_id
    );
    let dec2 = stream_day(c, "h-d3", "p6", "2026-12-02", vec![], vec![])
        .await
        .unwrap();
    assert_eq!(dec2.settled_hand_resolved_breaks, 0);
    assert_eq!(owed(&dec2), 0);
    // The day of a break a person resolved is not reconciled again: its
    // files would open h1 again, and a record the partner sends for it
    // would settle it a second time.
    for (rid, partner) in [
        ("h-d0-again", vec![]),
        ("h-d0-fixed", vec![on(rec(R, "h1", 2_000_00, 600_00))]),
    ] {
        let e = stream_day(
            c,
            rid,
            "p6",
            day0,
            vec![on(rec(R, "h1", 2_000_00, 600_00))],
            partner,
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{rid}");
        assert_eq!(reason(&e), "INVALID_STATE");
        assert!(
            e.message().contains(&h1.break_id) && e.message().contains("ops.li"),
            "{}",
            e.message()
        );
    }
    let h1_still = breaks_of(c, &run0.run_id)
        .await
        .into_iter()
        .find(|b| b.break_id == h1.break_id)
        .unwrap();
    assert_eq!(h1_still, h1_now);
    // Shanghai midnight, not UTC midnight, turns the day.
    let age = |c: &mut Client| {
        let mut c = c.clone();
        let id = h2.break_id.clone();
        let run = run0.run_id.clone();
        async move {
            breaks_of(&mut c, &run)
                .await
                .into_iter()
                .find(|b| b.break_id == id)
                .unwrap()
                .age_days
        }
    };
    clock.set(at("2026-12-01T15:59:00Z"));
    assert_eq!(age(c).await, 2);
    clock.set(at("2026-12-01T16:01:00Z"));
    assert_eq!(age(c).await, 3);
}

async fn scenario(backend: Backend) {
    let clock = Clock::manual(0);
    let settings = Settings {
        time_zone: parse_time_zone("Asia/Shanghai").unwrap(),
        clock: clock.clone(),
        ..Settings::default()
    };
    clock.set(chrono::Utc::now().timestamp_millis());
    let s = TestServer::start(backend, move |mesh| async move {
        Ok(vec![
            colend_reconciliation::register_with(mesh, settings).await?,
        ])
    })
    .await;
    let mut c = ReconciliationServiceClient::new(s.channel.clone());
    staged(&mut c).await;
    streamed(&mut c).await;
    rolling(&mut c).await;
    settlement_by_hand(&mut c).await;
    rolling_every_class(&mut c).await;
    currencies_apart(&mut c).await;
    overflow_is_refused(&mut c).await;
    hand_settlement_on_the_business_day(&mut c, &clock).await;
    s.stop().await;
}

#[tokio::test]
async fn reconciliation_api_embedded() {
    scenario(BOTH[0]).await;
}

#[tokio::test]
async fn reconciliation_api_postgres_redis() {
    scenario(BOTH[1]).await;
}

/// Storage as the version before rolling re-matching of every class left
/// it: migrations 0001 to 0003.
async fn previous_version(b: &colend_platform::config::Backends) -> colend_platform::Db {
    let old = colend_testkit::TempDir::new();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
    for entry in std::fs::read_dir(dir).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let version: u32 = name
            .split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if (1..4).contains(&version) {
            std::fs::copy(&path, old.0.join(name)).expect("copy");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.0.as_path())
        .await
        .expect("migrations before 0004");
    colend_platform::Db::connect(b, "reconciliation", &migrator)
        .await
        .expect("previous version")
}

/// A run as the earlier version stored it.
async fn old_run(
    db: &colend_platform::Db,
    run_id: &str,
    partner: &str,
    day: &str,
    three_way: bool,
) {
    let run = pb::Run {
        run_id: run_id.into(),
        partner_id: partner.into(),
        business_date: day.into(),
        settlement: Some(pb::Settlement {
            partner_owes_bank: cny(0),
            ..Default::default()
        }),
        options: Some(pb::RunOptions {
            three_way,
            ..Default::default()
        }),
        ..Default::default()
    };
    sqlx::query(
        "INSERT INTO recon_runs (run_id, partner_id, business_date, body, created_at) VALUES ($1, $2, $3, $4, 1)",
    )
    .bind(run_id)
    .bind(partner)
    .bind(day)
    .bind(hex::encode(prost::Message::encode_to_vec(&run)))
    .execute(&db.pool)
    .await
    .expect("old run");
}

/// A break as the earlier version stored it; `closed_by` closed it ('' for
/// open) as the earlier version did when the missing record arrived.
struct OldBreak<'a> {
    id: &'a str,
    partner: &'a str,
    day: &'a str,
    pair: &'a str,
    class: &'a str,
    left: Option<pb::Record>,
    right: Option<pb::Record>,
    closed_by: &'a str,
}

async fn old_break(db: &colend_platform::Db, b: OldBreak<'_>) {
    let rec = b.left.as_ref().or(b.right.as_ref()).expect("a record");
    let currency = rec.amount.as_ref().unwrap().currency_code.clone();
    let amount = |r: &Option<pb::Record>| {
        r.as_ref()
            .map_or(0, |r| r.amount.as_ref().unwrap().minor_units)
    };
    let hex_of = |r: &Option<pb::Record>| {
        r.as_ref()
            .map(|r| hex::encode(prost::Message::encode_to_vec(r)))
            .unwrap_or_default()
    };
    let open = b.closed_by.is_empty();
    sqlx::query(
        "INSERT INTO recon_breaks (break_id, run_id, partner_id, business_date, pair, break_class, status, \
         transaction_id, loan_id, currency, bank_amount, partner_amount, ledger_amount, detail, components, \
         left_record, right_record, resolved_by, resolution_reason, resolved_at, resolved_by_run_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, '', '', $13, $14, $15, $16, $17, $18, 1)",
    )
    .bind(b.id)
    .bind(b.id.split('-').next().unwrap())
    .bind(b.partner)
    .bind(b.day)
    .bind(b.pair)
    .bind(b.class)
    .bind(if open { "OPEN" } else { "RESOLVED" })
    .bind(&rec.transaction_id)
    .bind(&rec.loan_id)
    .bind(currency)
    .bind(amount(&b.left))
    .bind(amount(&b.right))
    .bind(hex_of(&b.left))
    .bind(hex_of(&b.right))
    .bind(if open { "" } else { "colend-reconciliation" })
    .bind(if open { "" } else { "the missing record arrived" })
    .bind(if open { 0i64 } else { 1i64 })
    .bind(b.closed_by)
    .execute(&db.pool)
    .await
    .expect("old break");
}

fn in_code(mut r: pb::Record, code: &str) -> pb::Record {
    for m in [&mut r.amount, &mut r.bank_portion, &mut r.partner_portion] {
        if let Some(m) = m.as_mut() {
            m.currency_code = code.into();
        }
    }
    r
}

/// Breaks an earlier version stored, upgraded: a closure whose pair still
/// differed is not taken for a settlement; records in a code the ISO table
/// now refuses still decode; the ledger breaks of a three-way run stand
/// against a run of the day that is not three-way; a run without records on
/// a day never reconciled is in the configured currency.
async fn stored_breaks(backend: Backend) {
    use pb::RecordKind::Repayment as R;
    let dir = colend_testkit::TempDir::new();
    let b = colend_testkit::backends(backend, &dir).await;
    let db = previous_version(&b).await;
    let (d1, d2) = ("2026-10-01", "2026-10-02");
    let ok = rec(R, "t-ok", 1_000_00, 300_00);
    let diff = rec(R, "t-diff", 2_000_00, 600_00);
    let mut diff_p = diff.clone();
    diff_p.amount = cny(2_000_05);
    diff_p.bank_portion = cny(1_400_05);
    let dup = rec(R, "t-dup", 500_00, 150_00);
    // q1: day 1's missing records arrived on day 2. t-ok then matched and
    // settled on day 2; t-diff still differed (day 2's amount mismatch holds
    // it); t-dup matched, the partner's second copy a duplicate of day 2.
    old_run(&db, "runa", "q1", d1, false).await;
    old_run(&db, "runb", "q1", d2, false).await;
    let q1 = |id, class, left: Option<pb::Record>, right: Option<pb::Record>, closed_by| OldBreak {
        id,
        partner: "q1",
        day: if id.starts_with("runa") { d1 } else { d2 },
        pair: "BANK_PARTNER",
        class,
        left,
        right,
        closed_by,
    };
    for brk in [
        q1(
            "runa-00000000",
            "MISSING_ON_PARTNER_SIDE",
            Some(ok.clone()),
            None,
            "runb",
        ),
        q1(
            "runa-00000001",
            "MISSING_ON_PARTNER_SIDE",
            Some(diff.clone()),
            None,
            "runb",
        ),
        q1(
            "runa-00000002",
            "MISSING_ON_BANK_SIDE",
            None,
            Some(dup.clone()),
            "runb",
        ),
        q1(
            "runb-00000000",
            "AMOUNT_MISMATCH",
            Some(diff),
            Some(diff_p),
            "",
        ),
        q1("runb-00000001", "DUPLICATE", None, Some(dup), ""),
    ] {
        old_break(&db, brk).await;
    }
    // q2: open breaks in codes the ISO table now refuses, and one in CNY.
    old_run(&db, "runc", "q2", d1, false).await;
    let cny_1 = rec(R, "cny-1", 700_00, 210_00);
    for (id, r) in [
        (
            "runc-00000000",
            in_code(rec(R, "rmb-1", 100_00, 30_00), "RMB"),
        ),
        (
            "runc-00000001",
            in_code(rec(R, "xts-1", 100_00, 30_00), "XTS"),
        ),
        ("runc-00000002", cny_1.clone()),
    ] {
        old_break(
            &db,
            OldBreak {
                id,
                partner: "q2",
                day: d1,
                pair: "BANK_PARTNER",
                class: "MISSING_ON_PARTNER_SIDE",
                left: Some(r),
                right: None,
                closed_by: "",
            },
        )
        .await;
    }
    // q3: a three-way run of day 1: l-1 matched between bank and partner,
    // missing in the ledger; l-2 only the bank has.
    old_run(&db, "rund", "q3", d1, true).await;
    let l1 = rec(R, "l-1", 900_00, 270_00);
    let l2 = rec(R, "l-2", 400_00, 120_00);
    for (id, pair, class, left) in [
        (
            "rund-00000000",
            "BANK_LEDGER",
            "MISSING_IN_LEDGER",
            l1.clone(),
        ),
        (
            "rund-00000001",
            "PARTNER_LEDGER",
            "MISSING_IN_LEDGER",
            l1.clone(),
        ),
        (
            "rund-00000002",
            "BANK_PARTNER",
            "MISSING_ON_PARTNER_SIDE",
            l2.clone(),
        ),
    ] {
        old_break(
            &db,
            OldBreak {
                id,
                partner: "q3",
                day: d1,
                pair,
                class,
                left: Some(left),
                right: None,
                closed_by: "",
            },
        )
        .await;
    }
    db.pool.close().await;

    let settings = Settings {
        currency: colend_core::Currency::INR,
        ..Settings::default()
    };
    let s = TestServer::start_with(b, dir, move |mesh| async move {
        Ok(vec![
            colend_reconciliation::register_with(mesh, settings).await?,
        ])
    })
    .await;
    let mut c = ReconciliationServiceClient::new(s.channel.clone());
    let c = &mut c;

    // q1: t-ok and t-dup settled on day 2; t-diff did not (its money is in
    // day 2's amount mismatch, which settles when it resolves).
    for b in breaks_of(c, "runa").await {
        let r = b.resolution.as_ref().unwrap();
        let settles = b.transaction_id != "t-diff";
        assert_eq!(r.settles, settles, "{backend:?} {}", b.transaction_id);
        let by = if settles { "runb" } else { "" };
        assert_eq!(r.settled_by_run_id, by, "{backend:?} {}", b.transaction_id);
        assert_eq!(r.resolved_by_run_id, "runb");
    }

    // q2: the partner's next day decodes every open break and settles the
    // CNY one; the others wait for a run in their code (or a person).
    let run = stream_day(c, "q2-d2", "q2", d2, vec![], vec![cny_1])
        .await
        .unwrap_or_else(|e| panic!("{backend:?}: {e:?}"));
    assert_eq!(run.resolved_earlier_breaks, 1);
    assert_eq!(owed(&run), -210_00);
    let open: Vec<String> = breaks_of(c, "runc")
        .await
        .into_iter()
        .filter(|b| b.status == pb::BreakStatus::Open as i32)
        .map(|b| b.transaction_id)
        .collect();
    assert_eq!(open, ["rmb-1", "xts-1"], "{backend:?}");

    // q3: day 1 again, not three-way: its bank–partner break is superseded,
    // the ledger breaks, which it does not compare, stay open.
    let again = stream_day(c, "q3-d1", "q3", d1, vec![l1.clone(), l2], vec![l1])
        .await
        .unwrap();
    assert_eq!(again.open_breaks, 1);
    for b in breaks_of(c, "rund").await {
        let ledger = b.pair != pb::Pair::BankPartner as i32;
        let want = if ledger {
            pb::BreakStatus::Open
        } else {
            pb::BreakStatus::Resolved
        };
        assert_eq!(b.status, want as i32, "{backend:?} {}", b.break_id);
    }

    // q4: a day never reconciled, without records: the configured currency.
    let empty = stream_day(c, "q4-d1", "q4", d1, vec![], vec![])
        .await
        .unwrap();
    let s4 = empty.settlement.as_ref().unwrap();
    assert_eq!(s4.partner_owes_bank.as_ref().unwrap().currency_code, "INR");
    s.stop().await;
}

#[tokio::test]
async fn stored_breaks_embedded() {
    stored_breaks(BOTH[0]).await;
}

#[tokio::test]
async fn stored_breaks_postgres_redis() {
    stored_breaks(BOTH[1]).await;
}
