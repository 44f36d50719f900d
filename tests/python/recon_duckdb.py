"""The same reconciliation as colend's, in DuckDB SQL: the benchmark's baseline.

Usage: python recon_duckdb.py BANK.csv PARTNER.csv [--amount-tolerance N] [--date-tolerance N]

Reads both files, applies colend's rules (services/reconciliation/README.md:
duplicates, one-to-one by transaction id with attribute / amount / split /
date classification, one-to-many and many-to-one over what is left, missing)
and prints one JSON object: counts by class, rejected rows, settlement.
"""
import argparse
import json
import sys

import duckdb

COLUMNS = [
    "transaction_id", "loan_id", "kind", "value_date", "currency", "amount", "bank_portion",
    "partner_portion", "principal", "interest", "fee", "penalty", "collected_by",
]


def load(con, name, path):
    cols = ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS)
    con.execute(f"""
        CREATE TEMP TABLE {name}_raw AS
        SELECT row_number() OVER () AS rn, *
        FROM read_csv('{path}', header = true, columns = {{{cols}}}, ignore_errors = true,
                      store_rejects = true, rejects_table = '{name}_rejects', rejects_scan = '{name}_scan')
    """)

    def money(c):
        # Exact: at most two decimals, no sign, parsed as DECIMAL.
        return (f"CASE WHEN regexp_full_match({c}, '[0-9]{{1,15}}(\\.[0-9]{{1,2}})?') "
                f"THEN CAST(CAST({c} AS DECIMAL(18,2)) * 100 AS BIGINT) END")

    con.execute(f"""
        CREATE TEMP TABLE {name}_typed AS
        SELECT rn, transaction_id AS tx, coalesce(loan_id, '') AS loan, kind,
               TRY_CAST(value_date AS DATE) AS vd, currency,
               {money('amount')} AS amt, {money('bank_portion')} AS bank, {money('partner_portion')} AS partner,
               (principal IS NULL AND interest IS NULL AND fee IS NULL AND penalty IS NULL) AS no_comp,
               {money('principal')} AS c1, {money('interest')} AS c2, {money('fee')} AS c3, {money('penalty')} AS c4,
               coalesce(collected_by, 'BANK') AS coll
        FROM {name}_raw
    """)
    con.execute(f"""
        CREATE TEMP TABLE {name} AS
        SELECT *, row_number() OVER (PARTITION BY tx ORDER BY rn) AS copy
        FROM {name}_typed
        WHERE tx IS NOT NULL AND length(tx) <= 64 AND length(loan) <= 64
          AND kind IN ('DISBURSEMENT', 'REPAYMENT', 'FEE') AND vd IS NOT NULL
          AND regexp_full_match(currency, '[A-Z]{{3}}') AND coll IN ('BANK', 'PARTNER')
          AND amt IS NOT NULL AND bank IS NOT NULL AND partner IS NOT NULL AND bank + partner = amt
          AND (no_comp OR (c1 IS NOT NULL AND c2 IS NOT NULL AND c3 IS NOT NULL AND c4 IS NOT NULL
                           AND c1 + c2 + c3 + c4 = amt))
    """)
    rows = con.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
    raw = con.execute(f"SELECT count(*) FROM {name}_raw").fetchone()[0]
    rejects = con.execute(f"SELECT count(DISTINCT line) FROM {name}_rejects").fetchone()[0]
    return rows, raw - rows + rejects


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bank")
    ap.add_argument("partner")
    ap.add_argument("--amount-tolerance", type=int, default=0)
    ap.add_argument("--date-tolerance", type=int, default=0)
    a = ap.parse_args()
    tol, days = a.amount_tolerance, a.date_tolerance
    con = duckdb.connect()
    bank_rows, bank_rejected = load(con, "b", a.bank)
    partner_rows, partner_rejected = load(con, "p", a.partner)

    # Who owes whom for one (bank) record: + partner owes bank, - bank owes partner.
    owed = """CASE WHEN {t}.kind = 'DISBURSEMENT' AND {t}.coll = 'PARTNER' THEN -{t}.bank
                   WHEN {t}.kind = 'DISBURSEMENT' THEN {t}.partner
                   WHEN {t}.coll = 'PARTNER' THEN {t}.bank
                   ELSE -{t}.partner END"""

    con.execute(f"""
        CREATE TEMP TABLE pairs AS
        SELECT b.tx AS btx, p.tx AS ptx, b.amt AS bamt, {owed.format(t='b')} AS owed,
          CASE
            WHEN b.tx IS NULL THEN 'LEFT_P'
            WHEN p.tx IS NULL THEN 'LEFT_B'
            WHEN b.loan <> p.loan OR b.kind <> p.kind OR b.coll <> p.coll THEN 'ATTRIBUTE_MISMATCH'
            WHEN abs(b.amt - p.amt) > {tol}
              OR (NOT b.no_comp AND NOT p.no_comp AND (abs(b.c1 - p.c1) > {tol} OR abs(b.c2 - p.c2) > {tol}
                  OR abs(b.c3 - p.c3) > {tol} OR abs(b.c4 - p.c4) > {tol})) THEN 'AMOUNT_MISMATCH'
            WHEN b.amt = p.amt AND abs(b.partner - p.partner) = 1 THEN 'SPLIT_ROUNDING'
            WHEN abs(b.partner - p.partner) > {tol} OR abs(b.bank - p.bank) > {tol} THEN 'AMOUNT_MISMATCH'
            WHEN abs(b.vd - p.vd) > {days} THEN 'DATE_OFFSET'
            ELSE 'MATCHED'
          END AS class
        FROM (SELECT * FROM b WHERE copy = 1) b
        FULL OUTER JOIN (SELECT * FROM p WHERE copy = 1) p ON b.tx = p.tx
    """)
    # What is left: one-to-many / many-to-one by loan, kind, value date, collector.
    con.execute(f"""
        CREATE TEMP TABLE groups AS
        WITH lb AS (SELECT b.* FROM b JOIN pairs ON pairs.btx = b.tx AND pairs.class = 'LEFT_B' WHERE b.copy = 1),
             lp AS (SELECT p.* FROM p JOIN pairs ON pairs.ptx = p.tx AND pairs.class = 'LEFT_P' WHERE p.copy = 1),
             gb AS (SELECT loan, kind, vd, coll, count(*) AS n, sum(amt) AS amt, sum(bank) AS bank,
                           sum(partner) AS partner, sum({owed.format(t='lb')}) AS owed
                    FROM lb GROUP BY ALL),
             gp AS (SELECT loan, kind, vd, coll, count(*) AS n, sum(amt) AS amt, sum(bank) AS bank,
                           sum(partner) AS partner FROM lp GROUP BY ALL)
        SELECT coalesce(gb.n, 0) AS nb, coalesce(gp.n, 0) AS np, gb.owed,
               ((gb.n = 1 AND gp.n >= 2) OR (gb.n >= 2 AND gp.n = 1))
               AND abs(gb.amt - gp.amt) <= {tol} AND abs(gb.bank - gp.bank) <= {tol}
               AND abs(gb.partner - gp.partner) <= {tol} AS matched
        FROM gb FULL OUTER JOIN gp USING (loan, kind, vd, coll)
    """)
    classes = dict(con.execute(
        "SELECT class, count(*) FROM pairs WHERE class NOT LIKE 'LEFT_%' GROUP BY class").fetchall())
    dups = con.execute(
        "SELECT (SELECT count(*) FROM b WHERE copy > 1) + (SELECT count(*) FROM p WHERE copy > 1)").fetchone()[0]
    if dups:
        classes["DUPLICATE"] = dups
    g_matched, miss_p, miss_b = con.execute("""
        SELECT count(*) FILTER (WHERE matched),
               coalesce(sum(nb) FILTER (WHERE NOT coalesce(matched, false)), 0),
               coalesce(sum(np) FILTER (WHERE NOT coalesce(matched, false)), 0)
        FROM groups""").fetchone()
    classes["MATCHED"] = classes.get("MATCHED", 0) + g_matched
    if miss_p:
        classes["MISSING_ON_PARTNER_SIDE"] = int(miss_p)
    if miss_b:
        classes["MISSING_ON_BANK_SIDE"] = int(miss_b)
    owed_total = con.execute("""
        SELECT coalesce((SELECT sum(owed) FROM pairs WHERE class = 'MATCHED'), 0)
             + coalesce((SELECT sum(owed) FROM groups WHERE matched), 0)""").fetchone()[0]
    json.dump({
        "bank_records": bank_rows,
        "partner_records": partner_rows,
        "bank_rejected": bank_rejected,
        "partner_rejected": partner_rejected,
        "classes": {k: int(v) for k, v in sorted(classes.items())},
        "partner_owes_bank_minor": int(owed_total),
    }, sys.stdout)
    print()


if __name__ == "__main__":
    main()
