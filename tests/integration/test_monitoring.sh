#!/usr/bin/env bash
# The monitoring files (k8s/monitoring/) checked with Prometheus's own
# tools, then against a running api-management that has done some work
# (users created, read, one refused; their events projected and relayed,
# their welcome email jobs run): promtool checks and unit tests of every
# alert, promtool's lint of the live /metrics, the metric tables of
# docs/observability.md against the families served, a real Prometheus on
# loopback that scrapes the service, evaluates the rules and holds the key
# series of every module with their labels, and the Grafana dashboard,
# whose every metric must be one the service exports and whose every query
# must run (and return data in the module rows).
#
# Tools: promtool and prometheus (Debian package prometheus), curl,
# python3 with yaml (yamllint's dependency), node.
set -uo pipefail
# shellcheck source=tests/lib/service.sh
. "$(dirname "$0")/../lib/service.sh"

SRC=${TRELLIS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
MON=$SRC/k8s/monitoring
DOC=$SRC/docs/observability.md
JOB=api-management
KEY=monitor-test-key-0123456789
PROM_PID=
PROM_PORT=

stop_prometheus() {
  if [ -n "$PROM_PID" ] && kill -0 "$PROM_PID" 2>/dev/null; then
    kill -TERM "$PROM_PID" 2>/dev/null
    for _ in $(seq 1 50); do
      kill -0 "$PROM_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$PROM_PID" 2>/dev/null || true
    wait "$PROM_PID" 2>/dev/null || true
  fi
  PROM_PID=
}
trap 'stop_prometheus; cleanup_service' EXIT

# jsonq PYTHON-EXPR: evaluates it with `d` bound to the JSON on stdin.
jsonq() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }
# api METHOD PATH [curl args...]: http with the service's API key.
api() {
  local method=$1 path=$2
  shift 2
  http "$method" "$path" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' "$@"
}
# scrape: the service's /metrics into $WORK/metrics.txt; sample SERIES:
# the value of that exact series line in it.
scrape() { [ "$(http GET /metrics)" = 200 ] && cp "$WORK/body" "$WORK/metrics.txt"; }
sample() { awk -v s="$1" '$1 == s { print $2 }' "$WORK/metrics.txt"; }

for tool in promtool prometheus curl python3 node; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    fail "$tool is missing: run scripts/install-deps test (Debian packages prometheus, curl, yamllint, nodejs)"
    finish
    exit 1
  fi
done

# --- 1. rules: syntax, unit tests, one firing and one quiet case each -------
out=$(promtool check rules "$MON/rules.yaml" 2>&1)
expect_eq "promtool check rules k8s/monitoring/rules.yaml" 0 "$?"
echo "$out"
out=$(cd "$MON/tests" && promtool test rules ./*.yaml 2>&1)
rc=$?
echo "$out"
expect_eq "promtool test rules k8s/monitoring/tests/*.yaml" 0 "$rc"

# Every alert has a case where it must fire and one where it must not,
# and a runbook section in docs/observability.md.
coverage=$(python3 - "$MON" "$DOC" <<'EOF'
import glob, re, sys, yaml
mon = sys.argv[1]
alerts = [r["alert"] for g in yaml.safe_load(open(mon + "/rules.yaml"))["groups"]
          for r in g["rules"] if "alert" in r]
runbooks = set(re.findall(r"^### (\w+)$", open(sys.argv[2]).read(), re.M))
fires, quiet = set(), set()
for path in glob.glob(mon + "/tests/*.yaml"):
    for t in yaml.safe_load(open(path))["tests"]:
        for c in t.get("alert_rule_test", []):
            (fires if c.get("exp_alerts") else quiet).add(c["alertname"])
for a in alerts:
    missing = [w for w, s in (("firing", fires), ("quiet", quiet), ("runbook", runbooks))
               if a not in s]
    print(f"{a}\t{','.join(missing) or 'ok'}")
EOF
)
while IFS=$'\t' read -r alert missing; do
  [ -n "$alert" ] || continue
  expect_eq "alert $alert has a firing and a quiet unit test and a runbook section" ok "$missing"
done <<<"$coverage"
n_alerts=$(printf '%s\n' "$coverage" | grep -c .)
[ "$n_alerts" -ge 5 ] || fail "only $n_alerts alerts found in rules.yaml"

# The scrape example, with a static target where Kubernetes discovery was
# (Debian's promtool is built without it).
mkdir -p "$WORK/cfg"
cp "$MON/rules.yaml" "$WORK/cfg/"
sed -e '/^    kubernetes_sd_configs:/,/^    relabel_configs:/{/^    relabel_configs:/!d}' \
    -e 's/^    relabel_configs:/    static_configs:\n      - targets: ["127.0.0.1:8080"]\n    relabel_configs:/' \
    "$MON/prometheus.yaml" >"$WORK/cfg/prometheus.yaml"
out=$(promtool check config "$WORK/cfg/prometheus.yaml" 2>&1)
rc=$?
echo "$out"
expect_eq "promtool check config k8s/monitoring/prometheus.yaml (static target)" 0 "$rc"
grep -q 'kubernetes_sd_configs' "$MON/prometheus.yaml" ||
  fail "prometheus.yaml does not discover pods with kubernetes_sd_configs"

# --- 2. the live /metrics of api-management, after some work -------------
# The hourly cleanup moved out of the way: its job would be pending for a
# moment at the top of the hour.
start_service API_KEYS=$KEY CLEANUP_SCHEDULE='0 0 1 1 *'
for path in /health/live /health/ready /version /version /no/such/route; do
  http GET "$path" >/dev/null
done

# Three users: three UserCreated events, projected into the read model,
# relayed to the bus, each starting a welcome_email job.
ids=()
for i in 1 2 3; do
  expect_eq "POST /api/v1/users creates user $i" 201 \
    "$(api POST /api/v1/users -d "{\"name\":\"User $i\",\"email\":\"user$i@example.com\"}")"
  ids+=("$(jsonq 'd["id"]' <"$WORK/body")")
done
done_jobs=
for _ in $(seq 1 150); do
  scrape
  done_jobs=$(sample 'trellis_jobs_finished_total{kind="welcome_email",outcome="completed"}')
  [ "$done_jobs" = 3 ] && break
  sleep 0.1
done
expect_eq "the three welcome_email jobs completed" 3 "$done_jobs"
expect_eq "trellis_es_appended_events_total counts the three events" 3 \
  "$(sample trellis_es_appended_events_total)"
# A refused command (the email is taken), reads through the cache (the
# first waits for the read model), and a user that does not exist.
expect_eq "POST /api/v1/users with a taken email answers 409" 409 \
  "$(api POST /api/v1/users -d '{"name":"Again","email":"user1@example.com"}')"
for id in "${ids[@]}"; do
  expect_eq "GET user $id (min_version=1) answers 200" 200 "$(api GET "/api/v1/users/$id?min_version=1")"
  api GET "/api/v1/users/$id" >/dev/null
  api GET "/api/v1/users/$id" >/dev/null
done
expect_eq "GET an unknown user answers 404" 404 \
  "$(api GET /api/v1/users/01900000-0000-7000-8000-000000000000)"

expect_eq "GET /metrics answers 200" 200 "$(http GET /metrics)"
cp "$WORK/body" "$WORK/metrics.txt"
out=$(promtool check metrics <"$WORK/metrics.txt" 2>&1)
rc=$?
[ -n "$out" ] && echo "$out"
expect_eq "promtool check metrics on the service's /metrics after that work (no lint problems)" 0 "$rc"
expect_match "http_requests_total counts GET /version 200" \
  '^http_requests_total\{method="GET",route="/version",status="200"\} [1-9]' "$(cat "$WORK/metrics.txt")"
for name in process_resident_memory_bytes process_open_fds process_max_fds process_threads \
            process_start_time_seconds process_cpu_seconds_total trellis_build_info; do
  grep -q "^${name}[ {]" "$WORK/metrics.txt" ||
    fail "api-management does not export $name (app/api-management/main.c must call tl_metrics_register_process(tl_metrics_default()))"
done
# A family gets its series on first use; until then the exposition has
# its HELP and TYPE lines alone. Those of rare events (a cron slot missed,
# a due job left waiting, a Redis breaker) must be registered all the same.
for family in "trellis_jobs_cron_missed_total counter" "trellis_jobs_oldest_pending_age_seconds gauge" \
              "trellis_cache_breaker_open gauge"; do
  grep -qx "# TYPE $family" "$WORK/metrics.txt" ||
    fail "api-management does not register the family '$family' (no '# TYPE $family' line)"
done

# The metric tables of docs/observability.md (| `name` | type | labels |
# ...) against the families served: the same names and types, and for a
# family with series, the same label names.
doc_check=$(python3 - "$DOC" "$WORK/metrics.txt" <<'EOF'
import re, sys
doc, types, labels = {}, {}, {}
for line in open(sys.argv[1]):
    m = re.match(r"\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(counter|gauge|histogram)\s*\|([^|]*)\|", line)
    if m:
        names = re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", m.group(3)))
        doc[m.group(1)] = (m.group(2), sorted(names))
for line in open(sys.argv[2]):
    if line.startswith("# TYPE "):
        _, _, name, kind = line.split()
        types[name] = kind
    elif line.strip() and not line.startswith("#"):
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        name = m.group(1)
        family = name if name in types else re.sub(r"_(bucket|sum|count)$", "", name)
        keys = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2) or "")) - {"le"}
        labels.setdefault(family, sorted(keys))
bad = []
for name, kind in sorted(types.items()):
    if name not in doc:
        bad.append(f"{name} ({kind}) is served but not in the tables")
    elif doc[name][0] != kind:
        bad.append(f"{name}: the tables say {doc[name][0]}, the service serves a {kind}")
    elif name in labels and labels[name] != doc[name][1]:
        bad.append(f"{name}: the tables list labels {doc[name][1]}, the series have {labels[name]}")
bad += [f"{name} is in the tables but not served" for name in sorted(doc) if name not in types]
print("; ".join(bad))
EOF
)
expect_eq "docs/observability.md's tables list every served family with its type and labels" "" "$doc_check"

# --- 3. a real Prometheus scraping the service every second ----------------
PROM_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$WORK/cfg/live.yaml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - rules.yaml
scrape_configs:
  - job_name: $JOB
    static_configs:
      - targets: ["127.0.0.1:$SVC_PORT"]
EOF
prometheus --config.file="$WORK/cfg/live.yaml" --storage.tsdb.path="$WORK/prom" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!
PROM=http://127.0.0.1:$PROM_PORT

# query EXPR: prints the JSON answer of an instant query.
query() { curl -s --max-time 5 -G "$PROM/api/v1/query" --data-urlencode "query=$1"; }
# check_series <FILE: one "WHAT|SELECTOR|LABELS|CONDITION" a line: for
# each, Prometheus holds exactly one series for SELECTOR (job="api-management"
# added), its labels other than __name__, job and instance are LABELS
# (sorted, comma-separated), and its value v makes the Python expression
# CONDITION true. A LABELS of "=NAME" instead checks the sorted values of
# label NAME over all the series (CONDITION is then the expected list).
check_series() {
  local what want got
  cat >"$WORK/checks.txt"
  while IFS=$'\t' read -r what want got; do
    expect_eq "$what" "$want" "$got"
  done < <(python3 - "$PROM" "$JOB" "$WORK/checks.txt" <<'EOF'
import json, sys, urllib.parse, urllib.request
prom, job = sys.argv[1], sys.argv[2]
for line in open(sys.argv[3]).read().splitlines():
    if not line.strip():
        continue
    what, sel, labels, cond = line.split("|")
    sel = sel.replace("{", '{job="%s",' % job, 1) if "{" in sel else sel + '{job="%s"}' % job
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": sel})
    r = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
    if labels.startswith("="):
        got = " ".join(sorted({x["metric"].get(labels[1:], "") for x in r}))
        print(f"{what}\t{cond}\t{got}")
    elif len(r) != 1:
        print(f"{what}\tone series\t{len(r)} series for {sel}")
    else:
        v = float(r[0]["value"][1])
        keys = ",".join(sorted(set(r[0]["metric"]) - {"__name__", "job", "instance"}))
        ok = keys == labels and eval(cond)
        print(f"{what}\tlabels [{labels}], {cond}\t" +
              (f"labels [{labels}], {cond}" if ok else f"labels [{keys}], v = {v:g}"))
EOF
)
}

up=
for _ in $(seq 1 200); do
  kill -0 "$PROM_PID" 2>/dev/null || break
  up=$(query "up{job=\"$JOB\"}" | jsonq 'd["data"]["result"][0]["value"][1]')
  [ "$up" = 1 ] && break
  sleep 0.1
done
if [ "$up" != 1 ]; then
  fail "Prometheus did not scrape api-management (up='$up'); its log:"
  cat "$WORK/prometheus.log" >&2
  finish
  exit 1
fi
pass "Prometheus on 127.0.0.1:$PROM_PORT scrapes api-management: up{job=\"$JOB\"} == 1"

# Traffic while Prometheus watches, then a few scrapes.
for _ in 1 2 3; do
  http GET /version >/dev/null
  http GET /no/such/route >/dev/null
  api GET "/api/v1/users/${ids[0]}" >/dev/null
done
sleep 3
labels=$(query "http_requests_total{job=\"$JOB\",method=\"GET\",route=\"/version\",status=\"200\"}" |
  jsonq 'sorted(d["data"]["result"][0]["metric"].keys())')
expect_eq "http_requests_total has labels __name__, instance, job, method, route, status" \
  "['__name__', 'instance', 'job', 'method', 'route', 'status']" "$labels"
expect_eq "unmatched paths are one route label, not the raw path" 1 \
  "$(query "count(http_requests_total{job=\"$JOB\",route=\"unmatched\",status=\"404\"})" |
     jsonq 'd["data"]["result"][0]["value"][1]')"
rss=$(query "process_resident_memory_bytes{job=\"$JOB\"}" |
  jsonq '"%s %s" % (sorted(d["data"]["result"][0]["metric"].keys()), float(d["data"]["result"][0]["value"][1]) > 0)')
expect_eq "process_resident_memory_bytes has labels __name__, instance, job and a value > 0" \
  "['__name__', 'instance', 'job'] True" "$rss"
expect_eq "trellis_build_info is 1 with labels version and commit" \
  "1 ['__name__', 'commit', 'instance', 'job', 'version']" \
  "$(query "trellis_build_info{job=\"$JOB\"}" |
     jsonq '"%s %s" % (d["data"]["result"][0]["value"][1], sorted(d["data"]["result"][0]["metric"].keys()))')"

# The key series of every module, as Prometheus stored them.
check_series <<'EOF'
http: 3 users created|http_requests_total{method="POST",route="/api/v1/users",status="201"}|method,route,status|v == 3
http: 1 creation refused with 409|http_requests_total{method="POST",route="/api/v1/users",status="409"}|method,route,status|v == 1
http: user reads counted under the route template|http_requests_total{method="GET",route="/api/v1/users/{id}",status="200"}|method,route,status|v >= 12
db: idle connections of the default primary pool|trellis_db_pool_connections{pool="default",role="primary",state="idle"}|pool,role,state|v >= 1
db: connections in use of the default primary pool|trellis_db_pool_connections{pool="default",role="primary",state="in_use"}|pool,role,state|v >= 0
db: nobody waits for a connection|trellis_db_pool_pending_acquires{pool="default",role="primary"}|pool,role|v == 0
db: acquires are timed|trellis_db_pool_acquire_duration_seconds_count{pool="default",role="primary"}|pool,role|v > 0
db: no acquire timed out|trellis_db_pool_timeouts_total{pool="default",role="primary"}|pool,role|v == 0
db: the taken email is a unique violation|trellis_db_errors_total{pool="default",role="primary",class="unique"}|class,pool,role|v >= 1
jobs: trellis_jobs_depth has one series per state|trellis_jobs_depth|=state|cancelled discarded pending running
jobs: nothing pending once the emails are sent|trellis_jobs_depth{state="pending"}|state|v == 0
jobs: 3 welcome_email jobs submitted|trellis_jobs_submitted_total{kind="welcome_email"}|kind|v == 3
jobs: 3 welcome_email jobs completed|trellis_jobs_finished_total{kind="welcome_email",outcome="completed"}|kind,outcome|v == 3
jobs: 3 welcome_email runs timed|trellis_jobs_run_duration_seconds_count{kind="welcome_email"}|kind|v == 3
es: the events appended|trellis_es_appended_events_total||v >= 3
es: events read (projection, relay, welcome-email subscription)|trellis_es_read_events_total||v >= 9
es: no append conflict|trellis_es_append_conflicts_total||v == 0
es: lag gauges for every subscription|trellis_es_subscription_lag_seconds|=subscription|trellis-relay users welcome-email
es: the users projection has caught up (seconds)|trellis_es_subscription_lag_seconds{subscription="users"}|subscription|v == 0
es: the users projection has caught up (events)|trellis_es_subscription_lag_events{subscription="users"}|subscription|v == 0
mq: the relay published 3 user.created messages|trellis_mq_published_total{backend="memory",prefix="user"}|backend,prefix|v == 3
mq: 3 publishes timed|trellis_mq_publish_duration_seconds_count{backend="memory",prefix="user"}|backend,prefix|v == 3
mq: no publish failed|trellis_mq_publish_failed_total{backend="memory",prefix="user"}|backend,prefix|v == 0
mq: nothing dead-lettered|trellis_mq_dead_lettered_total{backend="memory",prefix="user"}|backend,prefix|v == 0
cache: reads counted by result|trellis_cache_requests_total|=result|error hit miss
cache: reads hit|trellis_cache_requests_total{cache="default",result="hit"}|cache,result|v >= 1
cache: no read failed|trellis_cache_requests_total{cache="default",result="error"}|cache,result|v == 0
cache: the unknown user was loaded as not found|trellis_cache_loads_total{cache="default",result="not_found"}|cache,result|v >= 1
cache: bytes held|trellis_cache_bytes{cache="default"}|cache|v > 0
cqrs: 3 CreateUser commands ok|trellis_cqrs_calls_total{bus="command",name="CreateUser",outcome="ok"}|bus,name,outcome|v == 3
cqrs: 1 CreateUser refused|sum without (outcome) (trellis_cqrs_calls_total{bus="command",name="CreateUser",outcome!="ok"})|bus,name|v == 1
cqrs: GetUser queries ok|trellis_cqrs_calls_total{bus="query",name="GetUser",outcome="ok"}|bus,name,outcome|v >= 12
cqrs: CreateUser calls timed|trellis_cqrs_call_duration_seconds_count{bus="command",name="CreateUser"}|bus,name|v == 4
cqrs: the 3 users committed through group commit|trellis_cqrs_group_commit_batch_size_sum||v == 3
EOF

# The rules loaded into the server evaluate without errors, and the
# recording rules produce the service's series.
rule_health=$(curl -s --max-time 5 "$PROM/api/v1/rules" |
  jsonq '" ".join(sorted({r["health"] for g in d["data"]["groups"] for r in g["rules"]}))')
expect_eq "every rule evaluates with health ok in a real Prometheus" ok "$rule_health"
expect_eq "job:http_request_error_ratio:rate5m is 0 for the service (no 5xx)" 0 \
  "$(query "job:http_request_error_ratio:rate5m{job=\"$JOB\"}" | jsonq 'd["data"]["result"][0]["value"][1]')"
firing=$(curl -s --max-time 5 "$PROM/api/v1/alerts" |
  jsonq '" ".join(a["labels"]["alertname"] for a in d["data"]["alerts"])')
expect_eq "no alert is pending or firing for a healthy service" "" "$firing"

# --- 4. the Grafana dashboard ----------------------------------------------
node -e 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))' "$MON/dashboard.json"
expect_eq "k8s/monitoring/dashboard.json is valid JSON" 0 "$?"
# One line per query: its row, its panel, the expression.
python3 - "$MON/dashboard.json" >"$WORK/exprs.tsv" <<'EOF'
import json, sys
def walk(p):
    for t in p.get("targets", []):
        yield p.get("title", ""), t["expr"]
    for c in p.get("panels", []):
        yield from walk(c)
d = json.load(open(sys.argv[1]))
row = ""
for panel in d["panels"]:
    if panel.get("type") == "row":
        row = panel["title"]
    for title, expr in walk(panel):
        print(f"{row}\t{title}\t{expr}")
for v in d.get("templating", {}).get("list", []):
    if v.get("type") == "query":
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        print(f"variables\tvariable {v['name']}\t{q}")
EOF
n_exprs=$(grep -c . "$WORK/exprs.tsv")
[ "$n_exprs" -ge 40 ] || fail "the dashboard has only $n_exprs queries"
rows=$(cut -f1 "$WORK/exprs.tsv" | sort -u | tr '\n' '|')
for module in 'Database pool' 'Background jobs' 'Event store' 'Messaging' 'Cache' 'CQRS'; do
  case $rows in *"$module"*) ;; *) fail "the dashboard has no row for $module" ;; esac
done

# Metric names in the queries: identifiers outside strings, label matchers,
# ranges and grouping clauses, that are not functions or keywords. Served
# means a series in the last scrape, or a family registered without one
# yet (its "# TYPE" line; a histogram's _bucket, _sum and _count with it).
python3 - "$WORK/exprs.tsv" "$WORK/metrics.txt" >"$WORK/names.tsv" <<'EOF'
import re, sys
sampled, declared = set(), set()
for l in open(sys.argv[2]):
    if l.startswith("# TYPE "):
        _, _, name, kind = l.split()
        declared |= {name} | ({name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else set())
    elif l.strip() and not l.startswith("#"):
        sampled.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", l).group(0))
keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
for line in open(sys.argv[1]):
    row, title, expr = line.rstrip("\n").split("\t", 2)
    if expr.startswith("label_values("):
        expr = expr[len("label_values("):].rsplit(",", 1)[0]
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = [m.group(1) for m in re.finditer(r"(?<![\w$.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", e)]
    names = [n for n in names if n.lower() not in keywords]
    if not names:
        print(f"unknown\t{title}: no metric name found in {expr}")
    for n in names:
        state = "sampled" if n in sampled else "declared" if n in declared else "unknown"
        print(f"{state}\t{title}: {n}")
EOF
expect_eq "every metric in the dashboard is one api-management serves" "" \
  "$(awk -F'\t' '$1 == "unknown" { print $2 }' "$WORK/names.tsv")"
echo "dashboard metrics registered without a series yet (rare events):" \
  "$(awk -F'\t' '$1 == "declared" { print $2 }' "$WORK/names.tsv" | sort -u | tr '\n' ';')"

# Every query runs in Prometheus (Grafana's variables filled in). In the
# module rows, a query whose metrics all have series must return some.
while IFS=$'\t' read -r row title status n; do
  expect_eq "dashboard query runs in Prometheus: $title" success "$status"
  case $row in HTTP*|Process|variables) continue ;; esac
  grep -qF "$(printf 'declared\t%s: ' "$title")" "$WORK/names.tsv" && continue
  expect_match "dashboard query returns data: $row / $title" '^[1-9]' "$n"
done < <(python3 - "$PROM" "$JOB" "$WORK/exprs.tsv" <<'EOF'
import json, sys, urllib.error, urllib.parse, urllib.request
prom, job = sys.argv[1], sys.argv[2]
for line in open(sys.argv[3]):
    row, title, expr = line.rstrip("\n").split("\t", 2)
    if expr.startswith("label_values("):
        expr = expr[len("label_values("):].rsplit(",", 1)[0]
    expr = expr.replace("$__rate_interval", "1m").replace("$job", job).replace("$instance", ".+")
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        d = json.load(urllib.request.urlopen(url, timeout=5))
    except urllib.error.HTTPError as e:
        d = json.load(e)
    print(f"{row}\t{title}\t{d['status']}\t{len(d.get('data', {}).get('result', []))}")
EOF
)

# --- 5. stop everything ----------------------------------------------------
stop_prometheus
stop_service TERM
expect_eq "api-management exits 0 on SIGTERM" 0 "$SVC_STATUS"
elapsed=$SECONDS
[ "$elapsed" -lt 60 ] || fail "the test took ${elapsed}s, over its 60 s budget"
echo "took ${elapsed}s"
finish
