#!/usr/bin/env bash
# Users read through the cache: read-your-write (update, then read with
# ?min_version) never returns an older version, with the in-process cache
# and with Redis; with Redis frozen mid-run every request still succeeds
# from the database, readiness says "degraded" but stays 200, and once
# Redis answers again no stale entry is served. HTTP caching: ETag and 304.
set -uo pipefail
. "$(dirname "$0")/../lib/service.sh"
. "$(dirname "$0")/../lib/api.sh"

REDIS=$(command -v redis-server) || { echo "FATAL: redis-server is not installed" >&2; exit 1; }

# ryw NAME ID COUNT TAG: COUNT renames, each read back with ?min_version
# set to the version the rename returned (one curl run, requests in order
# on one connection); prints how many reads were stale or failed.
ryw() {
  local name=$1 id=$2 n=$3 tag=$4 i url v0
  url="http://127.0.0.1:${INST_PORT[$name]}/api/v1/users/$id"
  v0=$(api "$name" GET "/api/v1/users/$id?min_version=1" >/dev/null; body_field .version)
  for i in $(seq 1 "$n"); do
    printf 'url = "%s"\nrequest = "PATCH"\ndata = "{\\"name\\":\\"%s %d\\"}"\n' "$url" "$tag" "$i"
    printf 'header = "Authorization: Bearer %s"\nwrite-out = "\\n"\nnext\n' "$API_KEY"
    printf 'url = "%s?min_version=%d"\nheader = "Authorization: Bearer %s"\nwrite-out = "\\n"\nnext\n' \
      "$url" $((v0 + i)) "$API_KEY"
  done | sed '$d' >"$WORK/ryw.cfg" # no "next" after the last request
  curl -s --max-time 600 -K "$WORK/ryw.cfg" >"$WORK/ryw.out"
  # Pairs (rename, read): bad when the rename failed, or the read is older
  # than the rename or has another name.
  jq -s --arg tag "$tag" --argjson n "$n" 'length as $all
      | [range(0; $all - 1; 2) as $k | .[$k] as $w | .[$k + 1] as $r
         | select($w.version == null or $r.version == null or $r.version < $w.version
                  or $r.name != $w.name or $w.name != "\($tag) \($k / 2 + 1)")]
      | length + ($n * 2 - $all | fabs)' "$WORK/ryw.out"
}

metric() {
  curl -s "http://127.0.0.1:${INST_PORT[$1]}/metrics" | grep -E "^$2" | awk '{s += $2} END {print s + 0}'
}

# --- the in-process cache (the default) ---
start_instance mem API_KEYS="$API_KEY"
expect_eq "create" 201 "$(api mem POST /api/v1/users -d '{"name":"Cache Me","email":"cache@example.com"}')"
id=$(body_field .id)
expect_eq "1000 updates, each read back at its version: never stale" 0 "$(ryw mem "$id" 1000 memory)"
api mem GET "/api/v1/users/$id" >/dev/null
hits_before=$(metric mem 'trellis_cache_requests_total\{[^}]*result="hit"')
for _ in 1 2 3; do api mem GET "/api/v1/users/$id" >/dev/null; done
hits_after=$(metric mem 'trellis_cache_requests_total\{[^}]*result="hit"')
[ "$hits_after" -ge $((hits_before + 3)) ] && pass "repeated reads are cache hits ($hits_before -> $hits_after)" ||
  fail "repeated reads are not cache hits ($hits_before -> $hits_after)"
etag=$(header ETag)
expect_eq "If-None-Match with the current ETag is 304" 304 "$(api mem GET "/api/v1/users/$id" -H "If-None-Match: $etag")"
api mem GET "/api/v1/users/$id/events?from_version=1001" >/dev/null
expect_eq "the events have an ETag too" 304 \
  "$(api mem GET "/api/v1/users/$id/events?from_version=1001" -H "If-None-Match: $(header ETag)")"
expect_match "authenticated reads are private" 'private' "$(header Cache-Control)"
expect_eq "a stale ETag gets the document" 200 "$(api mem GET "/api/v1/users/$id" -H 'If-None-Match: "1"')"
kill_instance mem TERM

# --- Redis, with an outage in the middle ---
RPORT=$(free_port 21600 21699)
"$REDIS" --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  >"$WORK/redis.log" 2>&1 &
RPID=$!
trap 'kill -CONT $RPID 2>/dev/null; kill $RPID 2>/dev/null; drop_databases; cleanup_service' EXIT
wait_port "$RPORT"
start_instance red API_KEYS="$API_KEY" CACHE_URL="redis://127.0.0.1:$RPORT/0" CACHE_TIMEOUT=100ms \
  CACHE_BREAKER_OPEN=1s CACHE_KEY_PREFIX="e2e$$:"
expect_eq "create (Redis)" 201 "$(api red POST /api/v1/users -d '{"name":"Redis Me","email":"redis@example.com"}')"
id=$(body_field .id)
expect_eq "200 updates read back through Redis: never stale" 0 "$(ryw red "$id" 200 redis)"

kill -STOP "$RPID"
expect_eq "Redis frozen: 50 updates read back from the database, none failed or stale" 0 \
  "$(ryw red "$id" 50 frozen)"
expect_eq "readiness stays 200 while Redis is down" 200 "$(api red GET /health/ready)"
expect_match "and says the cache is degraded" '"cache":\{"status":"up","detail":"degraded' "$(cat "$WORK/body")"
last=$(api red GET "/api/v1/users/$id" >/dev/null; body_field .name)
expect_eq "a plain read while Redis is down has the last name" "frozen 50" "$last"

kill -CONT "$RPID"
sleep 1.5
expect_eq "after Redis returns, updates are read back fresh" 0 "$(ryw red "$id" 20 back)"
sleep 0.5
expect_eq "a plain read has the last name (no stale entry from before the outage)" "back 20" \
  "$(api red GET "/api/v1/users/$id" >/dev/null; body_field .name)"
expect_eq "readiness" 200 "$(api red GET /health/ready)"
expect_match "the breaker closed: the cache is no longer degraded" '^ok' \
  "$(jq -r '.checks.cache.detail // empty' "$WORK/body")"
expect_eq "no error in the log" "" "$(grep '"level":"error"' "${INST_LOG[red]}" | head -n 3)"
kill_instance red TERM
expect_eq "exit 0 on SIGTERM" 0 "$SVC_STATUS"
finish
