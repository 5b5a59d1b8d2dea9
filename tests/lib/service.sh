# Shell helpers for tests that drive the programs: start api-management on
# a free port, wait for it, stop it, and assertions that say what failed.
# Sourced by tests/*/test_*.sh.

BIN_DIR=${TRELLIS_BIN_DIR:?TRELLIS_BIN_DIR must name the bin folder of a build}
SVC_PID=
SVC_PORT=
SVC_LOG=
WORK=$(mktemp -d "${TMPDIR:-/tmp}/trellis-test.XXXXXX")
FAILURES=0
PASSES=0

cleanup_service() {
  if [ -n "$SVC_PID" ] && kill -0 "$SVC_PID" 2>/dev/null; then
    kill -KILL "$SVC_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup_service EXIT

fail() { echo "FAIL: $*" >&2; FAILURES=$((FAILURES + 1)); }
pass() { echo "ok: $*"; PASSES=$((PASSES + 1)); }

# expect_eq WHAT EXPECTED ACTUAL
expect_eq() {
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1: expected '$2', got '$3'"; fi
}
# expect_match WHAT REGEX TEXT
expect_match() {
  if printf '%s' "$3" | grep -Eq -- "$2"; then pass "$1"; else fail "$1: '$3' does not match /$2/"; fi
}

# start_service [VAR=value ...]: runs api-management with HTTP_PORT=0 in an
# empty folder (no .env), logs to $SVC_LOG, sets SVC_PID and SVC_PORT.
start_service() {
  SVC_LOG=$WORK/service.log
  : >"$SVC_LOG"
  (cd "$WORK" && exec env HTTP_PORT=0 HTTP_BIND=127.0.0.1 "$@" "$BIN_DIR/api-management") \
    2>"$SVC_LOG" &
  SVC_PID=$!
  local i
  for i in $(seq 1 100); do
    SVC_PORT=$(sed -n 's/.*"msg":"api-management listening".*"port":\([0-9]*\).*/\1/p' "$SVC_LOG" | head -n1)
    [ -n "$SVC_PORT" ] && return 0
    kill -0 "$SVC_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "api-management did not start; its log:" >&2
  cat "$SVC_LOG" >&2
  exit 1
}

# stop_service SIGNAL: send it and wait; sets SVC_STATUS to the exit code.
stop_service() {
  kill "-$1" "$SVC_PID"
  SVC_STATUS=0
  wait "$SVC_PID" || SVC_STATUS=$?
  SVC_PID=
}

# http METHOD PATH [curl args...]: prints "<status>" and leaves the body in
# $WORK/body and the headers in $WORK/headers.
http() {
  local method=$1 path=$2
  shift 2
  curl -s -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' -X "$method" \
    --max-time 20 "$@" "http://127.0.0.1:$SVC_PORT$path"
}

finish() {
  echo "$PASSES passed, $FAILURES failed"
  [ "$FAILURES" -eq 0 ]
}
