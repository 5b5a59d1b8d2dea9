# Shell helpers for the api-management end-to-end tests: requests with the
# test key to a named instance, databases of their own on the servers of
# scripts/services, and waiting for log lines. Sourced after service.sh.

readonly API_KEY=e2e-test-key-0123456789abcdef
SERVICES_ENV=${TRELLIS_SERVICES_ENV:-/tmp/trellis-services/services.env}
CREATED_DBS=()

# service_url KEY: a URL from the environment or scripts/services' env file.
service_url() {
  local v=${!1:-}
  if [ -z "$v" ] && [ -f "$SERVICES_ENV" ]; then
    v=$(sed -n "s/^$1=//p" "$SERVICES_ENV" | head -n1)
  fi
  if [ -z "$v" ]; then
    echo "FATAL: $1 is not set: start the servers with scripts/services start" >&2
    exit 1
  fi
  printf '%s' "$v"
}

# with_database URL NAME: URL with its database name replaced by NAME.
with_database() {
  printf '%s' "${1%/*}/$2"
}

# new_database KIND NAME: create database NAME on the postgres or mysql
# server of scripts/services (dropped at exit); prints its URL.
new_database() {
  local kind=$1 name=$2 base
  case $kind in
    postgres) base=$(service_url TRELLIS_TEST_POSTGRES_URL) ;;
    mysql) base=$(service_url TRELLIS_TEST_MYSQL_URL) ;;
    *) echo "new_database: unknown kind $kind" >&2; exit 1 ;;
  esac
  "$BIN_DIR/trellis" db query --url "$base" "DROP DATABASE IF EXISTS $name" >/dev/null 2>&1
  if ! "$BIN_DIR/trellis" db query --url "$base" "CREATE DATABASE $name" >/dev/null; then
    echo "FATAL: cannot create database $name on $kind" >&2
    exit 1
  fi
  CREATED_DBS+=("$base $name")
  with_database "$base" "$name"
}

drop_databases() {
  local entry
  for entry in "${CREATED_DBS[@]}"; do
    "$BIN_DIR/trellis" db query --url "${entry% *}" "DROP DATABASE IF EXISTS ${entry#* }" >/dev/null 2>&1 || true
  done
}
trap 'drop_databases; cleanup_service' EXIT

# free_port FROM TO: the first port in FROM..TO nothing listens on.
free_port() {
  local p
  for p in $(seq "$1" "$2"); do
    (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null || { echo "$p"; return 0; }
  done
  echo "FATAL: no free port in $1..$2" >&2
  exit 1
}

# wait_port PORT: wait (5 s at most) until something listens on PORT.
wait_port() {
  local _
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

# api NAME METHOD PATH [curl args...]: a request with the test key to
# instance NAME; prints the status, leaves the body in $WORK/body and the
# headers in $WORK/headers.
api() {
  local name=$1 method=$2 path=$3
  shift 3
  curl -s -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' -X "$method" --max-time 30 \
    -H "Authorization: Bearer $API_KEY" "$@" "http://127.0.0.1:${INST_PORT[$name]}$path"
}

# body_field JQ: a field of the last response body.
body_field() {
  jq -r "$1" "$WORK/body"
}

# header VALUE of the last response (name in any case).
header() {
  sed -n "s/^$1: *//Ip" "$WORK/headers" | tr -d '\r' | head -n1
}

# welcomed_users LOG...: the distinct user ids whose welcome email job
# finished: it sent and recorded the email ("job done"), or, run again
# after a crash between the record and that log line, found it recorded
# ("already sent").
welcomed_users() {
  cat "$@" | grep -E '"msg":"welcome email (job done|already sent)"' |
    sed -n 's/.*"user_id":"\([^"]*\)".*/\1/p' | sort -u
}

# wait_log REGEX COUNT SECONDS FILE...: wait until the files together
# have COUNT lines matching REGEX; prints how many they have in the end.
wait_log() {
  local re=$1 want=$2 secs=$3 i n=0
  shift 3
  for i in $(seq 1 $((secs * 10))); do
    n=$(cat "$@" 2>/dev/null | grep -Ec -- "$re") || true
    [ "${n:-0}" -ge "$want" ] && break
    sleep 0.1
  done
  echo "${n:-0}"
}
