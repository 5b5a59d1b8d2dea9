#!/usr/bin/env bash
# shellcheck disable=SC2119 # start_service takes no argument here
# The monitoring files (k8s/monitoring/) checked with Prometheus's own
# tools, then against a running api-management: promtool checks and unit
# tests of every alert, promtool's lint of the live /metrics, a real
# Prometheus on loopback that scrapes the service and evaluates the rules,
# and the Grafana dashboard, whose every metric must be one the service
# exports and whose every query must run.
#
# Tools: promtool and prometheus (Debian package prometheus), curl,
# python3 with yaml (yamllint's dependency), node.
set -uo pipefail
# shellcheck source=tests/lib/service.sh
. "$(dirname "$0")/../lib/service.sh"

SRC=${TRELLIS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
MON=$SRC/k8s/monitoring
JOB=api-management
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

# Every alert has a case where it must fire and one where it must not.
coverage=$(python3 - "$MON" <<'EOF'
import glob, sys, yaml
mon = sys.argv[1]
alerts = [r["alert"] for g in yaml.safe_load(open(mon + "/rules.yaml"))["groups"]
          for r in g["rules"] if "alert" in r]
fires, quiet = set(), set()
for path in glob.glob(mon + "/tests/*.yaml"):
    for t in yaml.safe_load(open(path))["tests"]:
        for c in t.get("alert_rule_test", []):
            (fires if c.get("exp_alerts") else quiet).add(c["alertname"])
for a in alerts:
    missing = [w for w, s in (("firing", fires), ("quiet", quiet)) if a not in s]
    print(f"{a}\t{','.join(missing) or 'ok'}")
EOF
)
while IFS=$'\t' read -r alert missing; do
  [ -n "$alert" ] || continue
  expect_eq "alert $alert has a firing and a quiet unit test" ok "$missing"
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

# --- 2. the live /metrics of api-management --------------------------------
start_service
for path in /health/live /health/ready /version /version /no/such/route; do
  http GET "$path" >/dev/null
done
expect_eq "GET /metrics answers 200" 200 "$(http GET /metrics)"
cp "$WORK/body" "$WORK/metrics.txt"
out=$(promtool check metrics <"$WORK/metrics.txt" 2>&1)
rc=$?
[ -n "$out" ] && echo "$out"
expect_eq "promtool check metrics on the service's /metrics (no lint problems)" 0 "$rc"
expect_match "http_requests_total counts GET /version 200" \
  '^http_requests_total\{method="GET",route="/version",status="200"\} [1-9]' "$(cat "$WORK/metrics.txt")"
for name in process_resident_memory_bytes process_open_fds process_max_fds process_threads \
            process_start_time_seconds process_cpu_seconds_total trellis_build_info; do
  grep -q "^${name}[ {]" "$WORK/metrics.txt" ||
    fail "api-management does not export $name (app/api-management/main.c must call tl_metrics_register_process(tl_metrics_default()))"
done

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
# jsonq PYTHON-EXPR: evaluates it with `d` bound to the JSON on stdin.
jsonq() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)" 2>/dev/null; }

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
for _ in 1 2 3; do http GET /version >/dev/null; http GET /no/such/route >/dev/null; done
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
python3 - "$MON/dashboard.json" >"$WORK/exprs.tsv" <<'EOF'
import json, sys
def walk(p):
    for t in p.get("targets", []):
        yield p.get("title", ""), t["expr"]
    for c in p.get("panels", []):
        yield from walk(c)
d = json.load(open(sys.argv[1]))
for panel in d["panels"]:
    for title, expr in walk(panel):
        print(f"{title}\t{expr}")
for v in d.get("templating", {}).get("list", []):
    if v.get("type") == "query":
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        print(f"variable {v['name']}\t{q}")
EOF
n_exprs=$(grep -c . "$WORK/exprs.tsv")
[ "$n_exprs" -ge 10 ] || fail "the dashboard has only $n_exprs queries"

# Metric names in the queries: identifiers outside strings, label matchers,
# ranges and grouping clauses, that are not functions or keywords.
unknown=$(python3 - "$WORK/exprs.tsv" "$WORK/metrics.txt" <<'EOF'
import re, sys
served = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", l).group(0)
          for l in open(sys.argv[2]) if l.strip() and not l.startswith("#")}
keywords = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
bad = []
for line in open(sys.argv[1]):
    title, expr = line.rstrip("\n").split("\t", 1)
    if expr.startswith("label_values("):
        expr = expr[len("label_values("):].rsplit(",", 1)[0]
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = [m.group(1) for m in re.finditer(r"(?<![\w$.:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", e)]
    names = [n for n in names if n.lower() not in keywords]
    if not names:
        bad.append(f"{title}: no metric name found in {expr}")
    bad += [f"{title}: {n}" for n in names if n not in served]
print("\n".join(bad))
EOF
)
expect_eq "every metric in the dashboard is one api-management serves now" "" "$unknown"

# Every query runs in Prometheus (Grafana's variables filled in).
while IFS=$'\t' read -r title expr; do
  case $expr in label_values\(*) expr=${expr#label_values(}; expr=${expr%,*};; esac
  expr=${expr//\$__rate_interval/1m}
  expr=${expr//\$job/$JOB}
  expr=${expr//\$instance/.+}
  status=$(query "$expr" | jsonq 'd["status"]')
  expect_eq "dashboard query runs in Prometheus: $title" success "$status"
done <"$WORK/exprs.tsv"

# --- 5. stop everything ----------------------------------------------------
stop_prometheus
stop_service TERM
expect_eq "api-management exits 0 on SIGTERM" 0 "$SVC_STATUS"
elapsed=$SECONDS
[ "$elapsed" -lt 60 ] || fail "the test took ${elapsed}s, over its 60 s budget"
echo "took ${elapsed}s"
finish
