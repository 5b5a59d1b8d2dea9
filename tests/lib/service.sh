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

# Instances started by start_instance, by name: pid, port, log, folder.
declare -A INST_PID=() INST_PORT=() INST_LOG=() INST_DIR=()

cleanup_service() {
  local n
  for n in "${!INST_PID[@]}"; do
    if [ -n "${INST_PID[$n]}" ] && kill -0 "${INST_PID[$n]}" 2>/dev/null; then
      kill -KILL "${INST_PID[$n]}" 2>/dev/null || true
    fi
  done
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

# start_instance NAME [VAR=value ...]: runs api-management with HTTP_PORT=0
# in the folder $WORK/NAME (created; no .env there), logging to
# $WORK/NAME.log (appended, so a restart keeps the earlier lines), and
# waits until it listens. Sets INST_PID[NAME], INST_PORT[NAME],
# INST_LOG[NAME]. A second start of NAME reuses its folder (its SQLite
# file, for instance).
start_instance() {
  local name=$1 i port before
  shift
  INST_DIR[$name]=$WORK/$name
  INST_LOG[$name]=$WORK/$name.log
  mkdir -p "${INST_DIR[$name]}"
  touch "${INST_LOG[$name]}"
  before=$(grep -c '"msg":"api-management listening"' "${INST_LOG[$name]}")
  (cd "${INST_DIR[$name]}" && exec env HTTP_PORT=0 HTTP_BIND=127.0.0.1 "$@" "$BIN_DIR/api-management") \
    2>>"${INST_LOG[$name]}" &
  INST_PID[$name]=$!
  for i in $(seq 1 300); do
    port=$(grep '"msg":"api-management listening"' "${INST_LOG[$name]}" | tail -n +$((before + 1)) |
      sed -n 's/.*"port":\([0-9]*\).*/\1/p' | head -n1)
    if [ -n "$port" ]; then
      INST_PORT[$name]=$port
      return 0
    fi
    kill -0 "${INST_PID[$name]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "api-management ($name) did not start; its log:" >&2
  tail -n 40 "${INST_LOG[$name]}" >&2
  exit 1
}

# kill_instance NAME SIGNAL: send it and wait; sets SVC_STATUS.
kill_instance() {
  kill "-$2" "${INST_PID[$1]}"
  SVC_STATUS=0
  wait "${INST_PID[$1]}" || SVC_STATUS=$?
  INST_PID[$1]=
}

# start_service [VAR=value ...]: one instance named "svc" whose pid, port
# and log are also SVC_PID, SVC_PORT and SVC_LOG.
start_service() {
  start_instance svc "$@"
  SVC_PID=${INST_PID[svc]}
  SVC_PORT=${INST_PORT[svc]}
  SVC_LOG=${INST_LOG[svc]}
}

# stop_service SIGNAL: send it and wait; sets SVC_STATUS to the exit code.
stop_service() {
  kill_instance svc "$1"
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
