#!/usr/bin/env bash
# api-management against bad input, credentials, idempotency keys and its
# own OpenAPI document, on the embedded default. Every bad request gets a
# precise 4xx that names the field, nothing is written, and the service
# keeps serving.
set -uo pipefail
. "$(dirname "$0")/../lib/service.sh"
. "$(dirname "$0")/../lib/api.sh"

start_instance svc API_KEYS="$API_KEY,second-key-abcdefghijklmnop"

# bad NAME STATUS REGEX BODY: a POST /api/v1/users that must fail so.
bad() {
  expect_eq "$1: status" "$2" "$(api svc POST /api/v1/users --data-binary "$4")"
  expect_match "$1: detail" "$3" "$(jq -r .detail "$WORK/body" 2>/dev/null)"
  expect_match "$1: is a problem document" '^application/problem\+json' "$(header Content-Type)"
}

bad "malformed JSON" 400 'line 1, column' '{"name": "x", '
bad "empty body" 400 '.' ''
bad "not an object" 422 'expected a JSON object' '["x"]'
bad "wrong type" 422 "field 'name': expected a string, got an integer" '{"name":1,"email":"a@example.com"}'
bad "wrong type (email)" 422 "field 'email': expected a string, got null" '{"name":"A","email":null}'
bad "missing field" 422 "field 'email' is required" '{"name":"A"}'
bad "unknown field" 422 "unknown field 'admin'" '{"name":"A","email":"a@example.com","admin":true}'
bad "the id is not settable" 422 "unknown field 'id'" '{"id":"x","name":"A","email":"a@example.com"}'
bad "empty name" 422 "field 'name': expected 1 to 100 characters, got 0" '{"name":"","email":"a@example.com"}'
bad "long name" 422 "field 'name': expected 1 to 100 characters, got 101" \
  "{\"name\":\"$(printf 'é%.0s' $(seq 1 101))\",\"email\":\"a@example.com\"}"
bad "control character" 422 "field 'name': contains a control character" '{"name":"A\u0007B","email":"a@example.com"}'
bad "NUL in a string" 400 "not allowed" '{"name":"A\u0000B","email":"a@example.com"}'
bad "not an email" 422 "field 'email': 'john' is not an email address" '{"name":"A","email":"john"}'
bad "two @" 422 "field 'email'" '{"name":"A","email":"a@b@example.com"}'
bad "header injection in the email" 422 "field 'email'" '{"name":"A","email":"a@example.com\r\nBcc: x@example.com"}'
bad "invalid UTF-8" 400 'decode byte 0xff' "$(printf '{"name":"\xff\xfe","email":"a@example.com"}')"
bad "duplicate key" 400 'duplicate' '{"name":"A","name":"B","email":"a@example.com"}'

# A body over HTTP_MAX_BODY (1 MiB) is refused before it is read.
head -c $((10 * 1024 * 1024)) /dev/zero | tr '\0' 'a' >"$WORK/big"
expect_eq "10 MB body is 413" 413 "$(api svc POST /api/v1/users -H 'Content-Type: application/json' \
  --data-binary @"$WORK/big")"

# Injection strings are data: stored and returned byte for byte.
sqli="Robert'); DROP TABLE rm_users;--"
expect_eq "an SQL injection string is just a name" 201 "$(api svc POST /api/v1/users \
  -d "$(jq -nc --arg n "$sqli" '{name:$n,email:"bobby@example.com"}')")"
id=$(body_field .id)
expect_eq "JSON injection string is just a name" 201 "$(api svc POST /api/v1/users \
  -d '{"name":"x\",\"admin\":true,\"y\":\"","email":"o'"'"'hara@example.com"}')"
id2=$(body_field .id)
expect_eq "read the first back" 200 "$(api svc GET "/api/v1/users/$id?min_version=1")"
expect_eq "the name is stored as sent" "$sqli" "$(body_field .name)"
expect_eq "read the second back" 200 "$(api svc GET "/api/v1/users/$id2?min_version=1")"
expect_eq "no field was injected" 'x","admin":true,"y":" null' "$(body_field '"\(.name) \(.admin)"')"

# Query strings and paths.
for q in 'limit=0' 'limit=101' 'limit=1000000000000000000000' 'limit=-1' 'limit=abc' 'active=yes' \
  "cursor=%27%20OR%201%3D1%20--"; do
  expect_eq "GET /api/v1/users?$q is 400" 400 "$(api svc GET "/api/v1/users?$q")"
  expect_match "GET /api/v1/users?$q names the argument" "query '${q%%=*}'" "$(jq -r .detail "$WORK/body")"
done
expect_eq "a path id that is no UUID is 404" 404 "$(api svc GET "/api/v1/users/1%20OR%201=1")"
expect_eq "an unknown user is 404" 404 "$(api svc GET /api/v1/users/01900000-0000-7000-8000-000000000000)"
expect_eq "min_version=abc is 400" 400 "$(api svc GET "/api/v1/users/$id?min_version=abc")"
expect_eq "at=yesterday is 400" 400 "$(api svc GET "/api/v1/users/$id?at=yesterday")"
expect_eq "a bad If-Match is 400" 400 "$(api svc PATCH "/api/v1/users/$id" -H 'If-Match: v3' -d '{"name":"B"}')"
expect_eq "PATCH with nothing to change is 422" 422 "$(api svc PATCH "/api/v1/users/$id" -d '{}')"
expect_eq "PATCH with an unknown field is 422" 422 "$(api svc PATCH "/api/v1/users/$id" -d '{"role":"admin"}')"
expect_eq "PUT is not allowed" 405 "$(api svc PUT "/api/v1/users/$id" -d '{}')"
expect_match "405 says what is" 'GET' "$(header Allow)"
expect_eq "GET /api/v1/jobs?state=bogus is 400" 400 "$(api svc GET '/api/v1/jobs?state=bogus')"
expect_eq "retrying job 0 is 404" 404 "$(api svc POST /api/v1/jobs/0/retry)"

# Credentials: writes, reads and admin routes need a key; 401 says no more.
code=$(curl -s -o "$WORK/body" -w '%{http_code}' -X POST "http://127.0.0.1:${INST_PORT[svc]}/api/v1/users" \
  -d '{"name":"A","email":"noauth@example.com"}')
expect_eq "POST without a key is 401" 401 "$code"
expect_eq "401 has no detail" null "$(jq -r .detail "$WORK/body")"
expect_eq "GET without a key is 401" 401 "$(curl -s -o /dev/null -w '%{http_code}' \
  "http://127.0.0.1:${INST_PORT[svc]}/api/v1/users/$id")"
expect_eq "a wrong key is 401" 401 "$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer e2e-test-key-0123456789abcdeX' \
  "http://127.0.0.1:${INST_PORT[svc]}/api/v1/users/$id")"
expect_eq "the admin rebuild without a key is 401" 401 "$(curl -s -o /dev/null -w '%{http_code}' -X POST \
  "http://127.0.0.1:${INST_PORT[svc]}/api/v1/admin/projections/users/rebuild")"
expect_eq "the second key as X-API-Key works" 200 "$(curl -s -o /dev/null -w '%{http_code}' \
  -H 'X-API-Key: second-key-abcdefghijklmnop' "http://127.0.0.1:${INST_PORT[svc]}/api/v1/users/$id")"
expect_eq "the probes stay open" 200 "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${INST_PORT[svc]}/health/ready")"

# Idempotency keys: the same key and body give the first response; the
# same key with another body is 422; nothing is created twice.
expect_eq "first POST with a key" 201 "$(api svc POST /api/v1/users -H 'Idempotency-Key: k-1' \
  -d '{"name":"Idem","email":"idem@example.com"}')"
first=$(body_field .id)
expect_eq "the same POST again" 201 "$(api svc POST /api/v1/users -H 'Idempotency-Key: k-1' \
  -d '{"name":"Idem","email":"idem@example.com"}')"
expect_eq "returns the first user" "$first" "$(body_field .id)"
expect_eq "the same key with another body is 422" 422 "$(api svc POST /api/v1/users -H 'Idempotency-Key: k-1' \
  -d '{"name":"Other","email":"other@example.com"}')"
expect_match "and says so" "Idempotency-Key" "$(jq -r .detail "$WORK/body")"
expect_eq "the read model has it" 200 "$(api svc GET "/api/v1/users/$first?min_version=1")"
expect_eq "the list" 200 "$(api svc GET '/api/v1/users?limit=100')"
expect_eq "one user has that email" 1 "$(body_field '[.items[] | select(.email == "idem@example.com")] | length')"
expect_eq "the other body created nothing" 0 "$(body_field '[.items[] | select(.email == "other@example.com")] | length')"

# A client that retries while its first try still runs (8 at once, one
# key): every try answers the one user the first created, none gets 409
# for the email the first one took, and one user exists.
racers=()
for i in 1 2 3 4 5 6 7 8; do
  curl -s -o "$WORK/race.$i" -w '%{http_code}\n' --max-time 30 -X POST \
    -H "Authorization: Bearer $API_KEY" -H 'Idempotency-Key: race-1' \
    -d '{"name":"Race","email":"race@example.com"}' \
    "http://127.0.0.1:${INST_PORT[svc]}/api/v1/users" >"$WORK/race.$i.status" &
  racers+=($!)
done
wait "${racers[@]}"
expect_eq "concurrent tries with one key: all 201" "201 201 201 201 201 201 201 201" \
  "$(cat "$WORK"/race.[1-8].status | tr '\n' ' ' | sed 's/ $//')"
expect_eq "and all answer the same user" 1 "$(jq -r .id "$WORK"/race.[1-8] | sort -u | wc -l)"
expect_eq "the list" 200 "$(api svc GET '/api/v1/users?limit=100')"
expect_eq "one user has that email" 1 "$(body_field '[.items[] | select(.email == "race@example.com")] | length')"

# Keyset pagination walks every user once.
for i in $(seq 1 7); do api svc POST /api/v1/users -d "{\"name\":\"P$i\",\"email\":\"p$i@example.com\"}" >/dev/null; done
api svc GET '/api/v1/users?limit=100' >/dev/null
users=$(body_field '.items | length')
seen=""; cursor=""
for _ in $(seq 1 20); do
  api svc GET "/api/v1/users?limit=3${cursor:+&cursor=$cursor}" >/dev/null
  seen="$seen $(body_field '[.items[].id] | join(" ")')"
  cursor=$(body_field '.next_cursor // empty')
  [ -z "$cursor" ] && break
done
total=$(echo "$seen" | wc -w)
expect_eq "pages of 3 cover the $users users of one page of 100" "$users" "$total"
expect_eq "which are the 11 created" 11 "$users"
expect_eq "no user twice across pages" "$total" "$(echo "$seen" | tr ' ' '\n' | grep . | sort -u | wc -l)"

# The OpenAPI document is served and matches the routes, both ways.
expect_eq "GET /openapi.json" 200 "$(curl -s -o "$WORK/openapi.json" -D "$WORK/headers" -w '%{http_code}' \
  "http://127.0.0.1:${INST_PORT[svc]}/openapi.json")"
expect_eq "it is OpenAPI 3.1" 3.1.0 "$(jq -r .openapi "$WORK/openapi.json")"
expect_match "a CDN may cache it" 'public, max-age=' "$(header Cache-Control)"
documented=$(jq -r '.paths | to_entries[] | .key as $p | .value | keys[] | "\(ascii_upcase) \($p)"' \
  "$WORK/openapi.json" | sort)
while read -r route; do
  if printf '%s\n' "$documented" | grep -qxF "$route"; then pass "documented: $route"
  else fail "route not in openapi.json: $route"; fi
done < <("$BIN_DIR/api-management" --print-routes)
while read -r method path; do
  p=${path//\{id\}/$id}
  [ "$path" = "/api/v1/jobs/{id}/retry" ] && p=/api/v1/jobs/999999/retry
  code=$(api svc "$method" "$p" -H 'Content-Type: application/json' -d '{"name":"Doc Check"}')
  if [ "$code" != 404 ] || [[ $path == *"{id}"* ]]; then
    [ "$code" = 405 ] && fail "documented $method $path answers 405" || pass "documented $method $path is served ($code)"
  else
    fail "documented $method $path answers 404"
  fi
done <<<"$documented"

# Still serving, and no request made it log an error.
expect_eq "still serving" 201 "$(api svc POST /api/v1/users -d '{"name":"Last","email":"last@example.com"}')"
expect_eq "no error in the log" "" "$(grep '"level":"error"' "${INST_LOG[svc]}" | head -n 3)"
kill_instance svc TERM
expect_eq "exit 0 on SIGTERM" 0 "$SVC_STATUS"
finish
