#!/usr/bin/env bash
# kill -9 under load: wrk creates users as fast as the service takes them,
# the service is killed with SIGKILL in the middle, then restarted on the
# same database. Every create that got a 201 must be readable, the read
# model must hold exactly the users the event store has (nothing
# half-written), and every user must get its welcome email (at least
# once; a second one only for a job that was sending when the process
# died). Runs on the embedded default and on PostgreSQL + NATS.
#
#   test_api_crash.sh [embedded|postgres-nats]...
set -uo pipefail
. "$(dirname "$0")/../lib/service.sh"
. "$(dirname "$0")/../lib/api.sh"

HERE=$(cd "$(dirname "$0")" && pwd)
WRK=$(command -v wrk) || { echo "FATAL: wrk is not installed (scripts/install-deps test)" >&2; exit 1; }

# all_users NAME FILE: every user id of the read model, one per line.
all_users() {
  local name=$1 out=$2 cursor=""
  : >"$out"
  for _ in $(seq 1 1000); do
    api "$name" GET "/api/v1/users?limit=100${cursor:+&cursor=$cursor}" >/dev/null
    jq -r '.items[].id' "$WORK/body" >>"$out"
    cursor=$(jq -r '.next_cursor // empty' "$WORK/body")
    [ -z "$cursor" ] && break
  done
}

crash() {
  local name=$1
  shift
  echo "--- $name"
  local env=(API_KEYS="$API_KEY" JOB_LEASE=2s JOB_POLL_INTERVAL=200ms LOG_LEVEL=info
             SERVICE_NAME="e2e-crash-$name-$$" "$@")
  start_instance "$name" "${env[@]}"
  env API_KEY="$API_KEY" RUN="$name-$$" "$WRK" -t1 -c8 -d8s -s "$HERE/create_users.lua" \
    "http://127.0.0.1:${INST_PORT[$name]}" >"$WORK/$name.wrk" 2>&1 &
  local wrk_pid=$!
  sleep 3
  kill_instance "$name" KILL
  wait "$wrk_pid"
  local acked
  acked=$(grep -c '^CREATED ' "$WORK/$name.wrk")
  [ "$acked" -ge 20 ] && pass "$name: $acked creates acknowledged before the kill" ||
    fail "$name: only $acked creates acknowledged before the kill (load too light to test)"

  start_instance "$name" "${env[@]}"
  # Every acknowledged create is readable (waiting for the projection).
  local missing=0 id
  for id in $(sed -n 's/^CREATED //p' "$WORK/$name.wrk"); do
    [ "$(api "$name" GET "/api/v1/users/$id?min_version=1")" = 200 ] || missing=$((missing + 1))
  done
  expect_eq "$name: every acknowledged create is readable after the restart" 0 "$missing"

  # Nothing half-written: the read model holds exactly the created users.
  all_users "$name" "$WORK/$name.users"
  local events
  events=$(env "${env[@]}" "$BIN_DIR/trellis" events tail --category user --no-follow 2>/dev/null |
    jq -r 'select(.type == "UserCreated") | .stream' | sed 's/^user-//' | sort)
  expect_eq "$name: the read model has one row per UserCreated event" \
    "$(echo "$events" | grep -c .)" "$(sort -u "$WORK/$name.users" | grep -c .)"
  expect_eq "$name: and the same users" "" \
    "$(diff <(echo "$events") <(sort "$WORK/$name.users") | head -n 3)"

  # Every user gets a welcome email; jobs that were running at the kill
  # run again once their lease expires.
  local users
  users=$(wc -l <"$WORK/$name.users")
  expect_eq "$name: a welcome email for every user" "$users" \
    "$(for _ in $(seq 1 60); do
         n=$(welcomed_users "${INST_LOG[$name]}" | wc -l)
         [ "$n" -ge "$users" ] && break
         sleep 1
       done; echo "$n")"
  if [ "$(welcomed_users "${INST_LOG[$name]}" | wc -l)" -lt "$users" ]; then
    for state in pending running discarded; do
      api "$name" GET "/api/v1/jobs?state=$state&limit=20" >/dev/null
      echo "jobs $state: $(jq -c '[.items[] | {id, kind, attempt, last_error, user: .args.user_id}]' "$WORK/body")"
    done
    grep -h '"level":"\(warn\|error\)"' "${INST_LOG[$name]}" | head -n 20
  fi
  local sent dup
  sent=$(grep -h '"msg":"email sent"' "${INST_LOG[$name]}" | wc -l)
  dup=$((sent - users))
  echo "$name: $users users, $sent emails sent ($dup sent again after the crash)"
  [ "$dup" -le 2 ] && pass "$name: emails sent twice: $dup (at most the jobs running at the kill)" ||
    fail "$name: $dup emails sent twice"
  expect_eq "$name: every email recorded once" "$users" \
    "$(env "${env[@]}" "$BIN_DIR/trellis" db query 'SELECT COUNT(DISTINCT user_id) AS n FROM welcome_emails' 2>/dev/null |
      jq -r .n)"
  kill_instance "$name" TERM
  expect_eq "$name: exit 0 on SIGTERM after the restart" 0 "$SVC_STATUS"
}

configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(embedded postgres-nats)
for c in "${configs[@]}"; do
  case $c in
    embedded) crash "$c" DATABASE_URL="sqlite://$WORK/$c/data/api-management.db" ;;
    postgres-nats)
      crash "$c" DATABASE_URL="$(new_database postgres "e2e_crash_$$")" MESSAGE_QUEUE_TYPE=nats \
        NATS_URL="$(service_url TRELLIS_TEST_NATS_URL)" ;;
    *) fail "unknown configuration '$c'" ;;
  esac
done
finish
