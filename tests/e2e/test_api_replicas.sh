#!/usr/bin/env bash
# Three replicas of api-management on one PostgreSQL and one NATS server,
# on different ports, one of them killed with SIGKILL halfway:
# - a write through any replica is read back through another once the
#   projection has caught up (?min_version=);
# - every event reaches the broker (one relay at a time, the lease moving
#   to a survivor), seen by an outside subscriber;
# - every user gets one welcome email among the three;
# - a per-second cron schedule runs each slot exactly once among them.
set -uo pipefail
. "$(dirname "$0")/../lib/service.sh"
. "$(dirname "$0")/../lib/api.sh"

NATS=$(service_url TRELLIS_TEST_NATS_URL)
DB=$(new_database postgres "e2e_replicas_$$")
ENV=(API_KEYS="$API_KEY" DATABASE_URL="$DB" MESSAGE_QUEUE_TYPE=nats NATS_URL="$NATS"
     CLEANUP_SCHEDULE='* * * * * *' JOB_LEASE=2s JOB_POLL_INTERVAL=200ms
     MIN_VERSION_TIMEOUT=30s DATABASE_MAX_CONNECTIONS=6 SERVICE_NAME="e2e-replicas-$$")

"$BIN_DIR/trellis" mq sub 'user.>' --group "e2e_replicas_$$" --timeout 300s --type nats --url "$NATS" \
  >"$WORK/sub" 2>"$WORK/sub.err" &
SUB_PID=$!
for _ in $(seq 1 80); do
  "$BIN_DIR/trellis" mq pub user.probe '{}' --type nats --url "$NATS" >/dev/null 2>&1
  grep -q '"user.probe"' "$WORK/sub" && break
  sleep 0.25
done

for r in r1 r2 r3; do start_instance "$r" "${ENV[@]}"; done
# create_and_read FIRST LAST REPLICA...: users FIRST..LAST, each created
# through one replica, renamed through the next and read back through the
# third; prints how many steps failed.
create_and_read() {
  local first=$1 last=$2 i w r id bad=0 created code
  shift 2
  local live=("$@")
  for i in $(seq "$first" "$last"); do
    w=${live[$((i % ${#live[@]}))]}
    r=${live[$(((i + 1) % ${#live[@]}))]}
    created=$i
    code=$(api "$w" POST /api/v1/users -d "{\"name\":\"R$created\",\"email\":\"r$created@example.com\"}")
    if [ "$code" != 201 ]; then
      echo "POST through $w: $code $(cat "$WORK/body")" >&2
      bad=$((bad + 1)); continue
    fi
    id=$(body_field .id)
    echo "$id" >>"$WORK/ids"
    [ "$(api "$r" PATCH "/api/v1/users/$id" -H 'If-Match: "1"' -d "{\"name\":\"R$created renamed\"}")" = 200 ] ||
      bad=$((bad + 1))
    w=${live[$(((i + 2) % ${#live[@]}))]}
    [ "$(api "$w" GET "/api/v1/users/$id?min_version=2")" = 200 ] && [ "$(body_field .name)" = "R$created renamed" ] ||
      bad=$((bad + 1))
  done
  echo "$bad"
}

expect_eq "30 users written and read across the three replicas" 0 "$(create_and_read 1 30 r1 r2 r3)"
START_KILL=$(date +%s)
kill_instance r1 KILL
expect_eq "30 more through the two survivors after r1 was killed" 0 "$(create_and_read 31 60 r2 r3)"
USERS=$(wc -l <"$WORK/ids")
expect_eq "60 users created" 60 "$USERS"

# The broker has every event: 60 users x (UserCreated, UserRenamed).
for _ in $(seq 1 150); do
  [ "$(grep -c '"user\.\(created\|renamed\)"' "$WORK/sub")" -ge 120 ] && break
  sleep 0.2
done
events=$(grep -v '"user.probe"' "$WORK/sub" | jq -r '.headers["event-id"]' | sort)
expect_eq "every event reached the broker" 120 "$(echo "$events" | sort -u | grep -c .)"
echo "events published twice (a relay killed between publish and checkpoint): $(($(echo "$events" | grep -c .) - $(echo "$events" | sort -u | grep -c .)))"
missing=0
while read -r id; do
  grep -q "\"stream\":\"user-$id\"" "$WORK/sub" || missing=$((missing + 1))
done <"$WORK/ids"
expect_eq "each user's events are on the broker" 0 "$missing"

# One welcome email per user among the replicas.
LOGS=("${INST_LOG[r1]}" "${INST_LOG[r2]}" "${INST_LOG[r3]}")
expect_eq "a welcome email job finished for every user" "$USERS" \
  "$(for _ in $(seq 1 60); do
       n=$(welcomed_users "${LOGS[@]}" | wc -l)
       [ "$n" -ge "$USERS" ] && break
       sleep 0.5
     done; echo "$n")"
sent=$(cat "${LOGS[@]}" | grep -c '"msg":"email sent"')
[ "$sent" -le $((USERS + 1)) ] && pass "emails sent: $sent for $USERS users (a second one only for a job running at the kill)" ||
  fail "emails sent: $sent for $USERS users"

# Each cron slot ran once among the replicas, and none was skipped.
sleep 3
slots=$(cat "${LOGS[@]}" | grep '"msg":"cleanup done"' | sed -n 's/.*"slot":"\([^"]*\)".*/\1/p' | sort)
total=$(echo "$slots" | grep -c .)
distinct=$(echo "$slots" | sort -u | grep -c .)
[ "$total" -ge 10 ] && pass "$total cron slots ran" || fail "only $total cron slots ran"
expect_eq "no cron slot ran twice" "$total" "$distinct"
first=$(date -u -d "$(echo "$slots" | head -n1)" +%s)
last=$(date -u -d "$(echo "$slots" | tail -n1)" +%s)
expect_eq "no second skipped between the first and the last slot (r1 killed at $START_KILL)" \
  $((last - first + 1)) "$distinct"

for r in r2 r3; do
  kill_instance "$r" TERM
  expect_eq "$r exits 0 on SIGTERM" 0 "$SVC_STATUS"
done
kill "$SUB_PID" 2>/dev/null
wait "$SUB_PID" 2>/dev/null
finish
