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

# mq: the seed's example across processes, on each real broker: a user.*
# subscriber gets user.created with its real subject, data and headers.
. "${TRELLIS_SERVICES_ENV:-/tmp/trellis-services/services.env}" 2>/dev/null || true
for broker in nats rabbitmq; do
  case $broker in
    nats) url=${TRELLIS_TEST_NATS_URL:-} ;;
    rabbitmq) url=${TRELLIS_TEST_RABBITMQ_URL:-} ;;
  esac
  if [ -z "$url" ]; then
    fail "mq on $broker: no URL; start it with scripts/services start $broker"
    continue
  fi
  group="cli-$$-$broker"
  trellis mq sub 'user.*' --group "$group" --count 1 --timeout 20s --type "$broker" --url "$url" \
    >"$WORK/sub.$broker" 2>"$WORK/sub.$broker.err" &
  sub=$!
  # The group's queue or consumer exists once the subscriber is up:
  # publish until it has received one (earlier ones wait in the queue).
  for _ in $(seq 1 40); do
    trellis mq pub user.created '{"user_id":"123"}' --header x-request-id=cli-test \
      --type "$broker" --url "$url" >/dev/null 2>&1
    [ -s "$WORK/sub.$broker" ] && break
    sleep 0.25
  done
  wait "$sub"; rc=$?
  out=$(head -n1 "$WORK/sub.$broker")
  expect_eq "mq sub on $broker exits 0 after --count 1" 0 "$rc"
  expect_match "mq sub on $broker gets the concrete subject" '"subject": ?"user.created"' "$out"
  expect_match "mq sub on $broker gets the data" '"data": ?"\{\\"user_id\\":\\"123\\"\}"|"data": ?\{"user_id": ?"123"\}' "$out"
  expect_match "mq sub on $broker gets the headers" '"x-request-id": ?"cli-test"' "$out"
done
out=$(trellis mq pub 'user.*' x --type nats --url "${TRELLIS_TEST_NATS_URL:-nats://127.0.0.1:1}" 2>&1); rc=$?
expect_eq "publishing to a wildcard exits 2" 2 "$rc"
expect_match "the wildcard subject is named" "user\.\*" "$out"

finish
