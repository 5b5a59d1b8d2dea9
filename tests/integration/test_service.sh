#!/usr/bin/env bash
# api-management end to end on its built-in routes: every endpoint, the
# configuration errors, the body limit and graceful shutdown under load.
set -uo pipefail
. "$(dirname "$0")/../lib/service.sh"

# --- configuration errors stop start-up, naming the key ---
out=$(cd "$WORK" && HTTP_PORT=abc "$BIN_DIR/api-management" 2>&1); rc=$?
expect_eq "HTTP_PORT=abc exits 2" 2 "$rc"
expect_match "HTTP_PORT=abc names the key and value" "HTTP_PORT: 'abc'" "$out"
out=$(cd "$WORK" && HTTP_PORT=70000 SHUTDOWN_TIMEOUT=10 LOG_LEVEL=loud "$BIN_DIR/api-management" --check-config 2>&1); rc=$?
expect_eq "--check-config with bad values exits 2" 2 "$rc"
expect_match "--check-config reports HTTP_PORT" "HTTP_PORT: '70000'" "$out"
expect_match "--check-config reports SHUTDOWN_TIMEOUT" "SHUTDOWN_TIMEOUT: '10'" "$out"
expect_match "--check-config reports LOG_LEVEL" "LOG_LEVEL: 'loud'" "$out"
out=$(cd "$WORK" && "$BIN_DIR/api-management" --check-config 2>&1); rc=$?
expect_eq "--check-config with defaults exits 0" 0 "$rc"
printf 'HTTP_PORT="80a"\n' >"$WORK/bad.env"
out=$(cd "$WORK" && env -u HTTP_PORT "$BIN_DIR/api-management" --env-file "$WORK/bad.env" --check-config 2>&1); rc=$?
expect_eq "a bad value in the .env file exits 2" 2 "$rc"
expect_match "the .env value is named" "HTTP_PORT: '80a'" "$out"
out=$("$BIN_DIR/api-management" --version); rc=$?
expect_match "--version" "^api-management [0-9]+\.[0-9]+\.[0-9]+" "$out"
out=$("$BIN_DIR/api-management" --bogus 2>&1); rc=$?
expect_eq "unknown argument exits 2" 2 "$rc"

# --- every endpoint ---
start_service DEBUG_ROUTES=true SHUTDOWN_DELAY=1s SHUTDOWN_TIMEOUT=10s APP_VARIANT=v2
expect_eq "GET /health/live" 200 "$(http GET /health/live)"
expect_match "/health/live body" '"status": ?"ok"' "$(cat "$WORK/body")"
expect_eq "GET /health/ready" 200 "$(http GET /health/ready)"
expect_match "/health/ready body" '"status": ?"ready"' "$(cat "$WORK/body")"
expect_eq "GET /version" 200 "$(http GET /version)"
expect_match "/version has the variant" '"variant": ?"v2"' "$(cat "$WORK/body")"
expect_match "/version has the version" '"version": ?"[0-9]+\.[0-9]+\.[0-9]+"' "$(cat "$WORK/body")"
expect_eq "GET /metrics" 200 "$(http GET /metrics)"
expect_match "/metrics is Prometheus text" '^# (HELP|TYPE) ' "$(head -n1 "$WORK/body")"
expect_match "/metrics counts requests by route template" \
  'http_requests_total\{[^}]*route="/version"[^}]*\} [1-9]' "$(cat "$WORK/body")"
expect_eq "unknown path is 404" 404 "$(http GET /nope)"
expect_match "404 is a problem document" 'application/problem\+json' "$(cat "$WORK/headers")"
expect_match "404 problem has status" '"status": ?404' "$(cat "$WORK/body")"
expect_eq "wrong method is 405" 405 "$(http POST /health/live -d '{}')"
expect_match "405 has Allow" '^[Aa]llow: .*GET' "$(cat "$WORK/headers")"
head -c $((2 * 1024 * 1024)) /dev/zero | tr '\0' 'a' >"$WORK/big"
expect_eq "a 2 MiB body is 413" 413 "$(http POST /health/live --data-binary @"$WORK/big")"
expect_match "413 is a problem document" '"status": ?413' "$(cat "$WORK/body")"
expect_eq "request id kept" 200 "$(http GET /health/live -H 'x-request-id: abc-123')"
expect_match "x-request-id echoed" '^x-request-id: abc-123' "$(tr -d '\r' <"$WORK/headers")"
expect_eq "bad debug query is 400" 400 "$(http GET '/debug/sleep?ms=x')"
expect_match "400 names the query parameter" "query 'ms'" "$(cat "$WORK/body")"
"$BIN_DIR/trellis" health "http://127.0.0.1:$SVC_PORT/health/ready" >/dev/null; rc=$?
expect_eq "trellis health exits 0 when ready" 0 "$rc"

# --- SIGTERM: readiness turns 503 at once, in-flight work completes ---
curl -s -o "$WORK/slow" -w '%{http_code}' --max-time 20 \
  "http://127.0.0.1:$SVC_PORT/debug/sleep?ms=2500" >"$WORK/slow_status" &
slow=$!
sleep 0.5
kill -TERM "$SVC_PID"
sleep 0.3
expect_eq "ready is 503 while draining" 503 "$(http GET /health/ready)"
expect_eq "live is still 200 while draining" 200 "$(http GET /health/live)"
"$BIN_DIR/trellis" health "http://127.0.0.1:$SVC_PORT/health/ready" >/dev/null; rc=$?
expect_eq "trellis health exits 1 while draining" 1 "$rc"
wait "$slow"
expect_eq "the in-flight slow request completed" 200 "$(cat "$WORK/slow_status")"
SVC_STATUS=0
wait "$SVC_PID" || SVC_STATUS=$?
SVC_PID=
expect_eq "the service exits 0 after SIGTERM" 0 "$SVC_STATUS"
expect_match "shutdown was logged" '"msg":"stopped"' "$(cat "$SVC_LOG")"
"$BIN_DIR/trellis" health "http://127.0.0.1:$SVC_PORT/health/ready" --timeout 2s >/dev/null 2>&1; rc=$?
expect_eq "trellis health exits 1 when nothing listens" 1 "$rc"

# --- SIGINT works the same way ---
start_service
stop_service INT
expect_eq "the service exits 0 after SIGINT" 0 "$SVC_STATUS"

finish
