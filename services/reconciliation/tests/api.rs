//! Reconciliation API tests against a real server on port 0, on both backends.
// Hand-computed amounts are written yuan_fen (12_345_67 is CNY 12,345.67).
#![allow(clippy::inconsistent_digit_grouping)]
use colend_contracts::common::v1::Money;
use colend_contracts::reconciliation::v1::{
    self as pb, reconciliation_service_client::ReconciliationServiceClient,
};
use colend_reconciliation::app::rec_pb;
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

async fn scenario(backend: Backend) {
    let s = TestServer::start(backend, |mesh| async move {
        Ok(vec![colend_reconciliation::register(mesh).await?])
    })
    .await;
    let mut c = ReconciliationServiceClient::new(s.channel.clone());
    staged(&mut c).await;
    streamed(&mut c).await;
    rolling(&mut c).await;
    settlement_by_hand(&mut c).await;
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
