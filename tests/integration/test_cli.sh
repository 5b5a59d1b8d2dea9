#!/usr/bin/env bash
# The trellis CLI end to end: dispatch, exit codes and the subcommands'
# documented outputs.
set -uo pipefail
. "$(dirname "$0")/../lib/service.sh"

trellis() { "$BIN_DIR/trellis" "$@"; }

out=$(trellis --help); rc=$?
expect_eq "--help exits 0" 0 "$rc"
expect_match "--help lists cron" "^  cron " "$out"
expect_match "--help lists db" "^  db " "$out"
out=$(trellis frobnicate 2>&1); rc=$?
expect_eq "unknown command exits 2" 2 "$rc"
expect_match "unknown command is named" "unknown command 'frobnicate'" "$out"
out=$(trellis version); rc=$?
expect_match "version" "^trellis [0-9]+\.[0-9]+\.[0-9]+ \(commit " "$out"

# cron next: the issue's example, exactly.
out=$(trellis cron next '0 * * * *' --from 2026-01-01T00:30:00Z --count 2); rc=$?
expect_eq "cron next exits 0" 0 "$rc"
expect_eq "cron next prints the next two hours" $'2026-01-01T01:00:00Z\n2026-01-01T02:00:00Z' "$out"
out=$(trellis cron next '30 2 * * *' --from 2026-03-08T00:00:00Z --tz America/New_York --count 1); rc=$?
expect_eq "a skipped local time runs right after the jump (02:30 EST->EDT)" "2026-03-08T07:00:00Z" "$out"
out=$(trellis cron next '0 0 30 2 *' 2>&1); rc=$?
expect_eq "an impossible expression exits 2" 2 "$rc"
expect_match "the impossible field is named" "day-of-month" "$out"
out=$(trellis cron next '61 * * * *' 2>&1); rc=$?
expect_eq "an out-of-range minute exits 2" 2 "$rc"
expect_match "the minute token is named" "minute.*'61'" "$out"

# db query: typed JSON lines on SQLite.
db="sqlite://$WORK/cli.db"
out=$(trellis db query --url "$db" 'SELECT $1 AS x' 42); rc=$?
expect_eq "db query exits 0" 0 "$rc"
expect_eq "db query binds and prints typed JSON" '{"x":42}' "$out"
out=$(trellis db query --url "$db" 'SELEC 1' 2>&1); rc=$?
expect_eq "db query with bad SQL exits 1" 1 "$rc"
out=$(trellis db query 2>&1); rc=$?
expect_eq "db query without SQL exits 2" 2 "$rc"
out=$(trellis db ping --url 'postgress://u:secret@h/db' 2>&1); rc=$?
expect_match "a bad scheme is named" "postgress" "$out"
if printf '%s' "$out" | grep -q secret; then fail "the password leaked: $out"; else pass "the password is masked"; fi

finish
