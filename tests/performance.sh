#!/usr/bin/env bash
# Runs every row of tests/performance.md on this machine:
#   cargo build --release -p colend && bash tests/performance.sh [sqlite|pg|all]
# `pg` uses the local PostgreSQL (DATABASE_URL's server; a database named
# colend_perf is dropped and made again) and Redis (REDIS_URL), and measures
# PostgreSQL's own TPC-B-like ceiling with pgbench in the same run.
set -uo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
bin=./target/release/colend
[ -x "$bin" ] || { echo "build first: cargo build --release -p colend" >&2; exit 2; }
pg_server="${PERF_PG_SERVER:-postgres://postgres@127.0.0.1:5432}"
redis_url="${REDIS_URL:-redis://127.0.0.1:6379}"
work=$(mktemp -d)
trap 'kill $up 2>/dev/null; rm -rf "$work"' EXIT
# The benchmarks lift the per-partner rate limit and the borrower velocity limit.
export COLEND_PARTNER_RATE_LIMIT=100000 COLEND_PARTNER_RATE_BURST=100000 COLEND_BORROWER_DAILY_APPLICATIONS=1000
export RUST_LOG=warn
up=

start() {
  "$bin" up "$@" > "$work/up.log" 2>&1 &
  up=$!
  for _ in $(seq 1 120); do
    grep -q "is up on" "$work/up.log" && return 0
    kill -0 $up 2>/dev/null || break
    sleep 0.5
  done
  cat "$work/up.log" >&2
  exit 1
}

stop() { kill $up; wait $up 2>/dev/null; up=; }

bench() {
  echo "--- colend bench $*"
  "$bin" bench "$@" 2>&1 | grep -v "^Error: 1 invariant\|^Stack backtrace\|^ \+[0-9]*:\|^ \+at "
}

rows() {
  local check=("$@")
  bench --duration-secs 15 --concurrency 64
  bench --duration-secs 10 --rate 100 --concurrency 64
  echo "--- colend check (after the journeys)"
  "$bin" check "${check[@]}" --wait-secs 60 || exit 1
  bench --scenario reservations --duration-secs 10 --concurrency 128
  bench --scenario reservations --duration-secs 10 --concurrency 128 --capacity-loans 5000
  bench --scenario kyc-cached --duration-secs 5 --concurrency 1
}

if [ "$which" = sqlite ] || [ "$which" = all ]; then
  echo "=== embedded: SQLite + in-process cache"
  start --data-dir "$work/data"
  rows --data-dir "$work/data"
  stop
fi

if [ "$which" = pg ] || [ "$which" = all ]; then
  echo "=== PostgreSQL + Redis"
  echo "--- pgbench: PostgreSQL alone, TPC-B-like, 16 clients, 10 s"
  psql -q "$pg_server/postgres" -c "DROP DATABASE IF EXISTS colend_pgbench" -c "CREATE DATABASE colend_pgbench"
  pgbench -q -i -s 10 "$pg_server/colend_pgbench" > /dev/null 2>&1
  pgbench -c 16 -j 2 -T 10 "$pg_server/colend_pgbench" 2>/dev/null | grep -E "^tps|latency average"
  psql -q "$pg_server/postgres" -c "DROP DATABASE colend_pgbench"
  psql -q "$pg_server/postgres" -c "DROP DATABASE IF EXISTS colend_perf" -c "CREATE DATABASE colend_perf"
  redis-cli -u "$redis_url" flushall > /dev/null
  export DATABASE_URL="$pg_server/colend_perf" REDIS_URL="$redis_url"
  export COLEND_AUTH_KEYS="${COLEND_AUTH_KEYS:-dev:colend-development-auth-key-not-for-production-use}"
  start
  bench --duration-secs 10 --rate 500 --concurrency 256
  psql -q "$DATABASE_URL" -At -c "SELECT 'transactions so far: ' || xact_commit || ', rows inserted: ' || tup_inserted || ', updated: ' || tup_updated FROM pg_stat_database WHERE datname = 'colend_perf'"
  psql -q "$DATABASE_URL" -At -c "SELECT 'applications so far: ' || count(*) FROM acquisition.applications"
  rows
  stop
fi
