#!/usr/bin/env bash
# The users flow end to end on every configuration the service supports,
# chosen only by DATABASE_URL and MESSAGE_QUEUE_TYPE: the embedded default
# (SQLite + the in-process bus), PostgreSQL with NATS, RabbitMQ and Kafka
# (librdkafka's mock cluster), and MariaDB with RabbitMQ.
#
# Each run: create, read, update, deactivate, the temporal read and the
# audit trail through the API; the welcome email job executed; every
# event seen by a subscriber outside the service (trellis mq sub) with the
# event id; one traceparent followed from the request to the job's log.
#
#   test_api_flow.sh [CONFIG...]   (default: all; names as below)
set -uo pipefail
. "$(dirname "$0")/../lib/service.sh"
. "$(dirname "$0")/../lib/api.sh"

TRACE=4bf92f3577b34da6a3ce929d0e0e4736
TP="00-$TRACE-00f067aa0ba902b7-01"

# start_subscriber NAME TYPE URL: `trellis mq sub 'user.>'` in a durable
# group of its own, writing JSON lines to $WORK/NAME.sub; returns once it
# has received a probe message (so it sees everything published after).
start_subscriber() {
  local name=$1 type=$2 url=$3
  "$BIN_DIR/trellis" mq sub 'user.>' --group "e2e_${name}_$$" --timeout 120s --type "$type" \
    --url "$url" >"$WORK/$name.sub" 2>"$WORK/$name.sub.err" &
  SUB_PID=$!
  for _ in $(seq 1 80); do
    "$BIN_DIR/trellis" mq pub user.probe '{}' --type "$type" --url "$url" >/dev/null 2>&1
    grep -q '"user.probe"' "$WORK/$name.sub" && return 0
    sleep 0.25
  done
  fail "$name: the outside subscriber never received its probe: $(cat "$WORK/$name.sub.err")"
}

# flow NAME MQ_TYPE MQ_URL [VAR=value...]: the whole flow on one configuration.
flow() {
  local name=$1 type=$2 url=$3
  shift 3
  echo "--- $name"
  SUB_PID=
  [ "$type" != memory ] && start_subscriber "$name" "$type" "$url"
  start_instance "$name" API_KEYS="$API_KEY" JOB_POLL_INTERVAL=200ms MESSAGE_QUEUE_TYPE="$type" \
    SERVICE_NAME="e2e-$name-$$" "$@"

  expect_eq "$name: POST creates" 201 "$(api "$name" POST /api/v1/users -H "traceparent: $TP" \
    -d '{"name":"Ada Lovelace","email":"Ada@Example.com"}')"
  local id loc
  id=$(body_field .id)
  expect_match "$name: the id is a UUID" '^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-' "$id"
  expect_eq "$name: the email is stored in lower case" ada@example.com "$(body_field .email)"
  expect_eq "$name: version 1" 1 "$(body_field .version)"
  loc=$(header Location)
  expect_eq "$name: Location names the user" "/api/v1/users/$id" "$loc"
  expect_eq "$name: ETag is the version" '"1"' "$(header ETag)"
  expect_eq "$name: the same email again is a conflict" 409 "$(api "$name" POST /api/v1/users \
    -d '{"name":"Other","email":"ada@example.COM"}')"
  expect_match "$name: the conflict names the field" "field 'email'.*already in use" "$(cat "$WORK/body")"

  expect_eq "$name: GET with min_version" 200 "$(api "$name" GET "$loc?min_version=1")"
  expect_eq "$name: GET reads the read model" "Ada Lovelace" "$(body_field .name)"
  expect_eq "$name: If-None-Match with the ETag is 304" 304 \
    "$(api "$name" GET "$loc" -H 'If-None-Match: "1"')"
  sleep 0.05
  local before_change
  before_change=$(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)
  sleep 0.05

  expect_eq "$name: PATCH name and email" 200 "$(api "$name" PATCH "$loc" -H 'If-Match: "1"' \
    -d '{"name":"Ada King","email":"ada@lovelace.example"}')"
  expect_eq "$name: two events make version 3" 3 "$(body_field .version)"
  expect_eq "$name: a stale If-Match is 412" 412 "$(api "$name" PATCH "$loc" -H 'If-Match: "1"' \
    -d '{"name":"Late"}')"
  expect_eq "$name: DELETE deactivates" 200 "$(api "$name" DELETE "$loc" -H 'If-Match: "3"')"
  expect_eq "$name: deactivated" false "$(body_field .active)"
  expect_eq "$name: GET after the writes (min_version=4)" 200 "$(api "$name" GET "$loc?min_version=4")"
  expect_eq "$name: the read model has the last state" "false Ada King ada@lovelace.example 4" \
    "$(body_field '"\(.active) \(.name) \(.email) \(.version)"')"
  expect_eq "$name: a deactivated user's email is free again" 201 "$(api "$name" POST /api/v1/users \
    -d '{"name":"Ada Again","email":"ada@lovelace.example"}')"

  expect_eq "$name: GET ?at= before the change" 200 "$(api "$name" GET "$loc?at=$before_change")"
  expect_eq "$name: the temporal read has the old state" "Ada Lovelace ada@example.com 1 true" \
    "$(body_field '"\(.name) \(.email) \(.version) \(.active)"')"
  expect_eq "$name: GET ?at= before the user existed is 404" 404 \
    "$(api "$name" GET "$loc?at=2000-01-01T00:00:00Z")"
  expect_eq "$name: GET /events" 200 "$(api "$name" GET "$loc/events")"
  expect_eq "$name: the audit trail" "UserCreated UserRenamed EmailChanged UserDeactivated" \
    "$(body_field '[.events[].type] | join(" ")')"
  expect_eq "$name: the first event carries the request's trace" "$TRACE" \
    "$(body_field '.events[0].metadata.traceparent' | cut -d- -f2)"
  local created_event
  created_event=$(body_field '.events[0].id')

  # The relay published user.created, the subscriber submitted the job, the
  # job sent the email: all under the request's trace id.
  expect_eq "$name: the welcome email job ran" 1 \
    "$(wait_log "\"msg\":\"welcome email job done\".*\"user_id\":\"$id\"" 1 30 "${INST_LOG[$name]}")"
  expect_match "$name: the job's log line has the request's trace id" "\"trace_id\":\"$TRACE\"" \
    "$(grep "\"msg\":\"welcome email job done\".*\"user_id\":\"$id\"" "${INST_LOG[$name]}")"
  expect_match "$name: the subscriber's log line has the request's trace id" "\"trace_id\":\"$TRACE\"" \
    "$(grep "\"msg\":\"welcome email job submitted\".*\"user_id\":\"$id\"" "${INST_LOG[$name]}")"
  if grep -q '"level":"debug"' "${INST_LOG[$name]}"; then
    expect_match "$name: the relay's log line has the request's trace id" "\"trace_id\":\"$TRACE\"" \
      "$(grep "\"msg\":\"event published\".*\"event_id\":\"$created_event\"" "${INST_LOG[$name]}")"
  fi
  expect_eq "$name: GET /api/v1/jobs" 200 "$(api "$name" GET '/api/v1/jobs?state=completed&kind=welcome_email')"
  expect_eq "$name: the completed job is listed" "$created_event" \
    "$(body_field ".items[] | select(.args.user_id == \"$id\") | .args.event_id")"

  if [ -n "$SUB_PID" ]; then
    for _ in $(seq 1 100); do
      [ "$(grep -c '"user\.' "$WORK/$name.sub")" -ge 6 ] && break
      sleep 0.2
    done
    kill "$SUB_PID" 2>/dev/null
    wait "$SUB_PID" 2>/dev/null
    local subjects
    subjects=$(grep -v '"user.probe"' "$WORK/$name.sub" |
      jq -r "select(.headers.stream == \"user-$id\") | .subject" | tr '\n' ' ')
    expect_eq "$name: the outside subscriber saw every event, in order" \
      "user.created user.renamed user.email_changed user.deactivated " "$subjects"
    expect_eq "$name: user.created carries the event id" "$created_event" \
      "$(grep -v '"user.probe"' "$WORK/$name.sub" |
        jq -r "select(.headers.stream == \"user-$id\" and .subject == \"user.created\") | .headers[\"event-id\"]" | head -n1)"
  fi

  kill_instance "$name" TERM
  expect_eq "$name: stops with exit 0 on SIGTERM" 0 "$SVC_STATUS"
  expect_eq "$name: no error in the log" "" \
    "$(grep '"level":"error"' "${INST_LOG[$name]}" | head -n 3)"
}

configs=("$@")
[ ${#configs[@]} -eq 0 ] && configs=(embedded postgres-nats postgres-rabbitmq postgres-kafka mariadb-rabbitmq)
for c in "${configs[@]}"; do
  case $c in
    embedded) flow "$c" memory "" LOG_LEVEL=debug ;;
    postgres-nats)
      flow "$c" nats "$(service_url TRELLIS_TEST_NATS_URL)" \
        DATABASE_URL="$(new_database postgres "e2e_flow_nats_$$")" \
        NATS_URL="$(service_url TRELLIS_TEST_NATS_URL)" ;;
    postgres-rabbitmq)
      flow "$c" rabbitmq "$(service_url TRELLIS_TEST_RABBITMQ_URL)" \
        DATABASE_URL="$(new_database postgres "e2e_flow_rabbit_$$")" \
        RABBITMQ_URL="$(service_url TRELLIS_TEST_RABBITMQ_URL)" ;;
    postgres-kafka)
      # The mock cluster lives in a process of its own, like a real one.
      "$BIN_DIR/trellis" mq kafka-mock --brokers 3 >"$WORK/kafka.addr" 2>"$WORK/kafka.err" &
      KAFKA_PID=$!
      for _ in $(seq 1 50); do [ -s "$WORK/kafka.addr" ] && break; sleep 0.1; done
      brokers=$(head -n1 "$WORK/kafka.addr")
      flow "$c" kafka "$brokers" DATABASE_URL="$(new_database postgres "e2e_flow_kafka_$$")" \
        KAFKA_BROKERS="$brokers"
      kill "$KAFKA_PID" 2>/dev/null; wait "$KAFKA_PID" 2>/dev/null ;;
    mariadb-rabbitmq)
      flow "$c" rabbitmq "$(service_url TRELLIS_TEST_RABBITMQ_URL)" \
        DATABASE_URL="$(new_database mysql "e2e_flow_maria_$$")" \
        RABBITMQ_URL="$(service_url TRELLIS_TEST_RABBITMQ_URL)" ;;
    *) fail "unknown configuration '$c'" ;;
  esac
done
finish
