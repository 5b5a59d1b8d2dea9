#!/usr/bin/env node
// Checks every Kubernetes and Istio object of the deployment: k8s/,
// k8s/istio/, and the renderings that deploy/check made (kubectl kustomize
// k8s/, the Helm chart with several values files).
//
//   node deploy/check-manifests.mjs --root DIR --rendered DIR [--facts FILE]
//
// Each finding is one line "FAIL: file:line: Kind/name: field: what is
// wrong"; the exit status is 1 when there is any. --facts writes what the
// live checks need (probe paths and ports, environments, the Dockerfile's
// health check) as JSON.
import fs from "node:fs";
import path from "node:path";
import { loadYaml, manifestFiles } from "./lib/objects.mjs";
import { schemaCheck, strictTypeCheck } from "./lib/models.mjs";
import { ObjectSet, checkWorkloads, checkIstio, checkChartDefaults, checkParity, checkKustomize } from "./lib/consistency.mjs";
import { checkDockerfile } from "./lib/dockerfile.mjs";

const args = process.argv.slice(2);
const opt = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const root = path.resolve(opt("--root") ?? ".");
const renderedDir = opt("--rendered");
const factsFile = opt("--facts");
if (!renderedDir) {
  console.error("usage: node deploy/check-manifests.mjs --root DIR --rendered DIR [--facts FILE]");
  process.exit(2);
}

let failures = 0;
const report = (what, findings) => {
  if (findings.length === 0) console.log(`ok: ${what}`);
  for (const f of findings) console.log(`FAIL: ${f}`);
  failures += findings.length;
};

// Read everything.
const chartDir = "helm/api-management";
const loadErrors = [];
const load = (file, opts) => {
  const r = loadYaml(root, file, opts);
  loadErrors.push(...r.errors);
  return r.items;
};
const k8sFiles = manifestFiles(root, "k8s");
const istioFiles = manifestFiles(root, "k8s/istio");
const k8sItems = k8sFiles.flatMap((f) => load(f));
const istioItems = istioFiles.flatMap((f) => load(f));
const renderings = [
  { file: "kustomize.yaml", label: "kubectl kustomize k8s/" },
  { file: "chart-default.yaml", label: "helm template, default values", chart: true },
  { file: "chart-canary-istio.yaml", label: "helm template, values deploy/values/canary-istio.yaml", chart: true },
  { file: "chart-alternatives.yaml", label: "helm template, values deploy/values/alternatives.yaml", chart: true },
];
const rendered = {};
for (const r of renderings) {
  const abs = path.join(path.resolve(renderedDir), r.file);
  if (!fs.existsSync(abs)) {
    loadErrors.push(`${r.label}: ${abs} is missing (deploy/check renders it)`);
    rendered[r.file] = [];
    continue;
  }
  rendered[r.file] = load(abs, { rendered: r.label, chartDir: r.chart ? chartDir : undefined });
}
report(`YAML of ${k8sFiles.length} files in k8s/, ${istioFiles.length} in k8s/istio/ and ${renderings.length} renderings parses`, loadErrors);
const counts = {
  "k8s/": k8sItems.length,
  "k8s/istio/": istioItems.length,
  ...Object.fromEntries(renderings.map((r) => [r.label, rendered[r.file].length])),
};
const empty = Object.entries(counts).filter(([, n]) => n === 0).map(([k]) => `${k}: no objects`);
report(`objects: ${Object.entries(counts).map(([k, n]) => `${k} ${n}`).join(", ")}`, empty);

// Schemas, then the strict type check. The kustomize rendering is compared
// with the files of k8s/ below instead: its findings would be theirs.
const all = [...k8sItems, ...istioItems, ...renderings.filter((r) => r.chart).flatMap((r) => rendered[r.file])];
const { findings: schemaFindings, typed } = await schemaCheck(all);
report(`${all.length} objects validate against the Kubernetes and Istio schemas (kubernetes-models, @kubernetes-models/istio)`, schemaFindings);
report(`${typed.length} objects type-check as literals of their models' types with tsc --strict (no unknown or misspelled field)`, strictTypeCheck(typed));

// Consistency.
const k8sSet = new ObjectSet("k8s/ and k8s/istio/", [...k8sItems, ...istioItems]);
const facts = { sets: {} };
facts.sets["k8s/"] = checkWorkloads(k8sSet, { istio: true });
checkIstio(k8sSet);
report("k8s/ and k8s/istio/: probes, ports, shutdown timing, autoscaler, Pod Security, selectors, Istio split and policies", k8sSet.findings);

const chartDefault = new ObjectSet("the chart with default values", rendered["chart-default.yaml"]);
facts.sets["chart (default values)"] = checkWorkloads(chartDefault, { istio: false });
checkChartDefaults(chartDefault);
report("chart with default values: probes, ports, shutdown timing, autoscaler, Pod Security, selectors; no canary, no Istio", chartDefault.findings);

const chartFull = new ObjectSet("the chart with canary and Istio on", rendered["chart-canary-istio.yaml"]);
facts.sets["chart (canary + Istio)"] = checkWorkloads(chartFull, { istio: true });
checkIstio(chartFull);
report("chart with canary and Istio on: the same checks, and the Istio split and policies", chartFull.findings);

report("the chart with canary and Istio on renders the same objects as k8s/ and k8s/istio/ (Helm labels, hooks and checksums aside)",
  checkParity(k8sSet, chartFull));
if (rendered["kustomize.yaml"].length > 0)
  report("kubectl kustomize k8s/ renders exactly the objects of the .yaml files kubectl apply -f k8s/ reads",
    checkKustomize(new ObjectSet("k8s/", k8sItems), new ObjectSet("kustomize", rendered["kustomize.yaml"])));

// The Dockerfile, and the image against the pods.
const docker = checkDockerfile(root);
const dockerFindings = [...docker.findings];
for (const set of [k8sSet, chartDefault, chartFull]) {
  for (const it of [...set.of("Deployment"), ...set.of("Job")]) {
    const sc = it.obj.spec?.template?.spec?.securityContext ?? {};
    if (docker.facts.user && String(sc.runAsUser) !== docker.facts.user)
      dockerFindings.push(`${it.where(["spec", "template", "spec", "securityContext", "runAsUser"])}: ${it.obj.kind}/${it.obj.metadata.name}: runAsUser ${sc.runAsUser} is not the image's USER ${docker.facts.user}`);
  }
  for (const it of set.of("Deployment")) {
    const port = (it.obj.spec?.template?.spec?.containers ?? [])[0]?.ports?.find((p) => p.name === "http")?.containerPort;
    if (docker.facts.port && port !== docker.facts.port)
      dockerFindings.push(`${it.where(["spec", "template", "spec", "containers", 0, "ports"])}: Deployment/${it.obj.metadata.name}: containerPort ${port} is not the image's EXPOSE ${docker.facts.port}`);
  }
}
report("Dockerfile: Debian 12 stages, the project's build steps, numeric non-root USER (= pods' runAsUser), exec-form ENTRYPOINT, trellis health HEALTHCHECK, no secrets", dockerFindings);
facts.dockerfile = docker.facts;

if (factsFile) fs.writeFileSync(factsFile, JSON.stringify(facts, null, 2));
console.log(failures === 0 ? "check-manifests: all checks passed" : `check-manifests: ${failures} finding(s)`);
process.exit(failures === 0 ? 0 : 1);
