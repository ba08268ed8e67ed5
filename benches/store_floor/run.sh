#!/bin/bash
# The store's write floor by row design: how long one backend of a throwaway PostgreSQL 15
# (fsync off, the bench's settings) takes to COPY 1,000,000 fills' rows in each design, with
# nothing else running. No walpoints, no walsender: what the rows alone cost the store.
#   benches/store_floor/run.sh          (as root: the cluster runs as the postgres OS user)
set -euo pipefail
export PGOPTIONS="-c client_min_messages=warning"
here=$(cd "$(dirname "$0")" && pwd)
bin=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
dir=$(mktemp -d /tmp/store-floor.XXXXXX)
chmod 777 "$dir"
as_pg() { if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else sh -c "$*"; fi; }
as_pg "$bin/initdb -D $dir/data -A trust" >/dev/null
as_pg "$bin/pg_ctl -D $dir/data -l $dir/log -w start -o \"-p 55499 -k $dir -c listen_addresses='' \
  -c fsync=off -c full_page_writes=off -c shared_buffers=128MB -c max_wal_size=8GB\"" >/dev/null
trap 'as_pg "$bin/pg_ctl -D $dir/data -m immediate stop" >/dev/null; rm -rf "$dir"' EXIT
P="$bin/psql -h $dir -p 55499 -U postgres -q -X -v ON_ERROR_STOP=1"
for f in rows variants; do sed "s#@DIR@#$dir#g" "$here/$f.sql" | $P -f - >/dev/null; done
time_copy() { # label, create statements, copy statements
  $P -c "DROP TABLE IF EXISTS t1, t2" -c "$2" -c "CHECKPOINT" >/dev/null 2>&1
  local s e; s=$(date +%s.%N); $P -c "$3" >/dev/null; e=$(date +%s.%N)
  printf "| %s | %.2f |\n" "$1" "$(echo "$e - $s" | bc)"
}
PK="PRIMARY KEY (source_id, epoch, commit_lsn, ordinal)"
BY="CREATE INDEX ON t1 (source_id, trade_id, commit_lsn, ordinal)"
cp="COPY t1 FROM '$dir/lf.bin' (FORMAT binary)"
echo "| 1,000,000 fills, COPY binary into | s (= µs a fill) |"
echo "|---|---:|"
for round in 1 2; do
  time_copy "today: ledger_fill (key + by_trade) and journal (key)" "CREATE TABLE t1 (LIKE lf, $PK); $BY; CREATE TABLE t2 (LIKE jr, $PK)" "$cp; COPY t2 FROM '$dir/jr.bin' (FORMAT binary)"
  time_copy "ledger_fill alone, key + by_trade" "CREATE TABLE t1 (LIKE lf, $PK); $BY" "$cp"
  time_copy "ledger_fill alone, key only" "CREATE TABLE t1 (LIKE lf, $PK)" "$cp"
  time_copy "ledger_fill alone, btree (trade_id) instead of by_trade" "CREATE TABLE t1 (LIKE lf, $PK); CREATE INDEX ON t1 (trade_id)" "$cp"
  time_copy "ledger_fill alone, no index" "CREATE TABLE t1 (LIKE lf)" "$cp"
  time_copy "journal alone, key" "CREATE TABLE t2 (LIKE jr, $PK)" "COPY t2 FROM '$dir/jr.bin' (FORMAT binary)"
  time_copy "combined row (ledger_fill + symbol), key + by_trade" "CREATE TABLE t1 (LIKE lf, symbol text, $PK); $BY" "COPY t1 FROM '$dir/c2.bin' (FORMAT binary)"
  time_copy "combined, int8 micro-points, key + by_trade" "CREATE TABLE t1 (LIKE c4, $PK); $BY" "COPY t1 FROM '$dir/c4.bin' (FORMAT binary)"
  time_copy "combined, int8 points, int4 user ids, key + by_trade" "CREATE TABLE t1 (LIKE c5, $PK); $BY" "COPY t1 FROM '$dir/c5.bin' (FORMAT binary)"
  time_copy "combined, int8 points, int4 user ids, key only" "CREATE TABLE t1 (LIKE c5, $PK)" "COPY t1 FROM '$dir/c5.bin' (FORMAT binary)"
done
