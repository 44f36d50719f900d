"""Reconciliation benchmark: colend's service against DuckDB, in one run.

    cargo build --release -p colend
    python -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt
    .venv/bin/python tests/python/recon_bench.py --records 1000000 --repeat 3

For each repetition it starts a fresh `colend serve reconciliation` (embedded
SQLite, or PostgreSQL with --postgres URL), streams both generated files
through `colend recon run` (the client parses the CSV, the service matches,
classifies, nets the settlement and stores the run, its breaks and every
settlement line), then runs the same reconciliation in DuckDB SQL
(recon_duckdb.py). Both must reproduce the generator's planted counts
exactly. Reported: wall time (median of the repetitions) and peak resident
memory: the service's (VmHWM), the client's and DuckDB's (ru_maxrss).
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd, env=None):
    """Runs cmd; returns (stdout, wall seconds, peak RSS MiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err.decode()}")
    return out.decode(), wall, usage.ru_maxrss / 1024


def vm(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_serving(colend, endpoint, proc):
    for _ in range(100):
        if proc.poll() is not None:
            sys.exit("the reconciliation service exited at start")
        r = subprocess.run([colend, "health", "--endpoint", endpoint, "--service",
                            "colend.reconciliation.v1.ReconciliationService"], capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    sys.exit("the reconciliation service did not become SERVING")


def check(name, got_classes, got, want):
    want_classes = want["exact"]["classes"]
    problems = []
    if got_classes != want_classes:
        problems.append(f"classes {got_classes} != planted {want_classes}")
    for k in ("bank_records", "partner_records"):
        if got[k] != want[k]:
            problems.append(f"{k} {got[k]} != {want[k]}")
    if got["rejected"] != want["bank_rejected"] + want["partner_rejected"]:
        problems.append(f"rejected {got['rejected']}")
    if got["owed"] != want["exact"]["partner_owes_bank_minor"]:
        problems.append(f"settlement {got['owed']} != {want['exact']['partner_owes_bank_minor']}")
    if problems:
        sys.exit(f"{name} does not reproduce the planted breaks: " + "; ".join(problems))


def verify(work):
    """Checks a run made by hand (CI): run.json from `colend recon run --json`,
    duckdb.json from recon_duckdb.py, breaks.csv and settlement.csv exports."""
    import csv
    from decimal import Decimal
    load = lambda n: json.load(open(os.path.join(work, n)))
    want, run, d = load("expected.json"), load("run.json"), load("duckdb.json")
    check("colend", run["classes"], {
        "bank_records": run["bank_records"], "partner_records": run["partner_records"],
        "rejected": run["rejected_rows"], "owed": run["settlement"]["partner_owes_bank_minor"],
    }, want)
    check("duckdb", d["classes"], {
        "bank_records": d["bank_records"], "partner_records": d["partner_records"],
        "rejected": d["bank_rejected"] + d["partner_rejected"], "owed": d["partner_owes_bank_minor"],
    }, want)
    with open(os.path.join(work, "breaks.csv")) as f:
        breaks = sum(1 for _ in csv.DictReader(f))
    if breaks != run["open_breaks"]:
        sys.exit(f"breaks.csv has {breaks} rows, the run {run['open_breaks']} breaks")
    net, lines = Decimal(0), 0
    with open(os.path.join(work, "settlement.csv")) as f:
        for row in csv.DictReader(f):
            v = Decimal(row["owed"])
            net += v if row["owed_by"] == "PARTNER" else -v
            lines += 1
    if int(net * 100) != want["exact"]["partner_owes_bank_minor"] or lines != run["settlement"]["lines"]:
        sys.exit(f"settlement.csv nets to {net} over {lines} lines")
    print(f"{run['bank_records']:,} bank / {run['partner_records']:,} partner records: every planted break "
          f"found by colend and by DuckDB ({run['open_breaks']:,} breaks, {run['rejected_rows']:,} rejected rows); "
          f"breaks.csv and settlement.csv ({lines:,} lines, net {net}) agree with the run")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--verify":
        return verify(sys.argv[2])
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--colend", default=os.path.join(ROOT, "target", "release", "colend"))
    ap.add_argument("--postgres", help="DATABASE_URL for the service (default: embedded SQLite)")
    ap.add_argument("--work", help="directory for the files (default: a temporary one)")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()

    work = a.work or tempfile.mkdtemp(prefix="colend-recon-bench-")
    os.makedirs(work, exist_ok=True)
    subprocess.run([a.colend, "recon", "generate", "--records", str(a.records), "--every", str(a.every),
                    "--out-dir", work], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(work, "expected.json")) as f:
        want = json.load(f)
    bank, partner = os.path.join(work, "bank.csv"), os.path.join(work, "partner.csv")
    size_mib = (os.path.getsize(bank) + os.path.getsize(partner)) / 2**20

    rows = {"colend": [], "duckdb": []}
    for i in range(a.repeat):
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        data = tempfile.mkdtemp(prefix="colend-recon-data-")
        env = dict(os.environ, RUST_LOG="warn")
        if a.postgres:
            env["DATABASE_URL"] = a.postgres
            # `colend recon run` signs with the development key: the service must know it.
            env.setdefault("COLEND_AUTH_KEYS", "dev:colend-development-auth-key-not-for-production-use")
        server = subprocess.Popen([a.colend, "serve", "reconciliation", "--listen", f"127.0.0.1:{port}",
                                   "--data-dir", data], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            wait_serving(a.colend, endpoint, server)
            base = vm(server.pid, "VmRSS")
            out, wall, client_rss = timed([a.colend, "recon", "run", "--endpoint", endpoint,
                                           "--partner-id", f"bench{i}", "--date", want["business_date"],
                                           "--bank", bank, "--partner", partner, "--json"])
            server_peak = vm(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait()
        run = json.loads(out)
        check("colend", run["classes"], {
            "bank_records": run["bank_records"], "partner_records": run["partner_records"],
            "rejected": run["rejected_rows"], "owed": run["settlement"]["partner_owes_bank_minor"],
        }, want)
        rows["colend"].append({"wall_s": wall, "server_peak_mib": server_peak, "server_base_mib": base,
                               "client_peak_mib": client_rss})

        out, wall, rss = timed([sys.executable, os.path.join(HERE, "recon_duckdb.py"), bank, partner])
        d = json.loads(out)
        check("duckdb", d["classes"], {
            "bank_records": d["bank_records"], "partner_records": d["partner_records"],
            "rejected": d["bank_rejected"] + d["partner_rejected"], "owed": d["partner_owes_bank_minor"],
        }, want)
        rows["duckdb"].append({"wall_s": wall, "peak_mib": rss})
        print(f"repetition {i + 1}: colend {rows['colend'][-1]['wall_s']:.2f} s, "
              f"duckdb {wall:.2f} s", file=sys.stderr)

    med = lambda k, side: statistics.median(r[k] for r in rows[side])
    c_wall, d_wall = med("wall_s", "colend"), med("wall_s", "duckdb")
    c_srv, c_cli = med("server_peak_mib", "colend"), med("client_peak_mib", "colend")
    d_rss = med("peak_mib", "duckdb")
    result = {
        "records_per_side": a.records,
        "input_mib": round(size_mib, 1),
        "backend": "postgres" if a.postgres else "sqlite",
        "repeat": a.repeat,
        "planted_counts_reproduced": True,
        "colend_wall_s": round(c_wall, 2),
        "colend_server_peak_mib": round(c_srv, 1),
        "colend_server_idle_mib": round(med("server_base_mib", "colend"), 1),
        "colend_client_peak_mib": round(c_cli, 1),
        "duckdb_wall_s": round(d_wall, 2),
        "duckdb_peak_mib": round(d_rss, 1),
        "speedup_vs_duckdb": round(d_wall / c_wall, 2),
        "memory_ratio_vs_duckdb": round((c_srv + c_cli) / d_rss, 2),
    }
    print(f"| {a.records:,} records a side ({size_mib:.0f} MiB CSV), {result['backend']} | wall (median of "
          f"{a.repeat}) | peak memory |")
    print("|---|---|---|")
    print(f"| colend (service + client) | {c_wall:.2f} s | {c_srv:.0f} MiB service + {c_cli:.0f} MiB client |")
    print(f"| DuckDB {__import__('duckdb').__version__} | {d_wall:.2f} s | {d_rss:.0f} MiB |")
    print(f"| ratio | colend {d_wall / c_wall:.2f}x DuckDB's speed | "
          f"{(c_srv + c_cli) / d_rss:.2f}x DuckDB's memory |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
