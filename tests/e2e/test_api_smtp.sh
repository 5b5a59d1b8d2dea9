#!/usr/bin/env bash
# Welcome emails over SMTP (SMTP_URL): while the SMTP server is down the
# job fails and retries with the reason in its last error; once a server
# answers, the email is delivered with its headers and body, and the user
# gets exactly one.
set -uo pipefail
. "$(dirname "$0")/../lib/service.sh"
. "$(dirname "$0")/../lib/api.sh"

HERE=$(cd "$(dirname "$0")" && pwd)
command -v socat >/dev/null || { echo "FATAL: socat is not installed (scripts/install-deps test)" >&2; exit 1; }
PORT=$(free_port 21500 21599)
export SMTP_OUT=$WORK/mail

start_instance svc API_KEYS="$API_KEY" SMTP_URL="smtp://127.0.0.1:$PORT" SMTP_FROM=noreply@example.com \
  SMTP_TIMEOUT=2s JOB_POLL_INTERVAL=200ms
expect_eq "create a user while no SMTP server runs" 201 \
  "$(api svc POST /api/v1/users -d '{"name":"Grace Hopper","email":"grace@example.com"}')"
id=$(body_field .id)
job=
for _ in $(seq 1 100); do
  api svc GET '/api/v1/jobs?kind=welcome_email' >/dev/null
  job=$(body_field ".items[] | select(.args.user_id == \"$id\" and .last_error != null) | .id")
  [ -n "$job" ] && break
  sleep 0.1
done
expect_match "the job failed and keeps the reason" "smtp: " "$(body_field ".items[] | select(.id == $job) | .last_error")"
expect_eq "and waits for its retry" pending "$(body_field ".items[] | select(.id == $job) | .state")"

socat "TCP-LISTEN:$PORT,bind=127.0.0.1,reuseaddr,fork" EXEC:"$HERE/smtp_sink.sh" 2>"$WORK/socat.err" &
SOCAT=$!
trap 'kill $SOCAT 2>/dev/null; drop_databases; cleanup_service' EXIT
# The retry comes after the backoff (2 s base, full jitter); ask for it now.
wait_port "$PORT"
api svc POST "/api/v1/jobs/$job/retry" >/dev/null
expect_eq "the email went out over SMTP" 1 \
  "$(wait_log '"msg":"email sent","sink":"smtp","to":"grace@example.com"' 1 30 "${INST_LOG[svc]}")"
expect_match "envelope sender" 'MAIL FROM:<noreply@example.com>' "$(cat "$SMTP_OUT")"
expect_match "envelope recipient" 'RCPT TO:<grace@example.com>' "$(cat "$SMTP_OUT")"
expect_match "subject header" '^Subject: Welcome' "$(cat "$SMTP_OUT")"
expect_match "the body greets the user" 'Hello Grace Hopper' "$(cat "$SMTP_OUT")"
sleep 1
expect_eq "exactly one message" 1 "$(grep -c -- '--- end of message' "$SMTP_OUT")"
kill_instance svc TERM
expect_eq "exit 0 on SIGTERM" 0 "$SVC_STATUS"
finish
