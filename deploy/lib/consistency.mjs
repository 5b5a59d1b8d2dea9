// Consistency of the manifests with the service and with each other: probe
// paths and ports, shutdown timing, the autoscaler, the restricted Pod
// Security profile, the Istio traffic split, and the chart against k8s/.
import { parse as parseYaml } from "yaml";
import { fieldPath, objName } from "./objects.mjs";

/** Seconds in a duration as api-management and Istio write them: 5s, 1m30s, 500ms, 0. */
export function durationSeconds(text) {
  if (typeof text === "number") return text;
  if (typeof text !== "string") return NaN;
  if (text.trim() === "0") return 0;
  const re = /([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)/gy;
  let total = 0;
  let m;
  let used = 0;
  while ((m = re.exec(text))) {
    total += Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
    used = re.lastIndex;
  }
  return used === text.length && used > 0 ? total : NaN;
}

const get = (o, p) => p.reduce((v, k) => (v == null ? undefined : v[k]), o);

/** A set of objects and helpers to report on them. */
export class ObjectSet {
  /** @param {string} label @param {import("./objects.mjs").Item[]} items */
  constructor(label, items) {
    this.label = label;
    this.items = items;
    this.findings = [];
  }
  of(kind) {
    return this.items.filter((it) => it.obj?.kind === kind);
  }
  find(kind, name) {
    return this.items.find((it) => it.obj?.kind === kind && it.obj?.metadata?.name === name);
  }
  fail(it, p, msg) {
    this.findings.push(`${it.where(p)}: ${objName(it.obj)}: ${fieldPath(p)}: ${msg}`);
  }
  failSet(msg) {
    this.findings.push(`${this.label}: ${msg}`);
  }
}

function matches(selector, labels) {
  return !!selector && Object.keys(selector).length > 0 &&
    Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

// The environment a container gets from its ConfigMaps, Secrets and env.
function containerEnv(set, it, podSpecPath, ci) {
  const c = get(it.obj, [...podSpecPath, "containers", ci]);
  const env = {};
  (c.envFrom ?? []).forEach((ref, i) => {
    if (ref.configMapRef) {
      const cm = set.find("ConfigMap", ref.configMapRef.name);
      if (!cm) set.fail(it, [...podSpecPath, "containers", ci, "envFrom", i, "configMapRef", "name"], `no ConfigMap '${ref.configMapRef.name}' among ${set.label}`);
      else Object.assign(env, cm.obj.data ?? {});
    }
    if (ref.secretRef) {
      const s = set.find("Secret", ref.secretRef.name);
      if (!s) set.fail(it, [...podSpecPath, "containers", ci, "envFrom", i, "secretRef", "name"], `no Secret '${ref.secretRef.name}' among ${set.label}`);
      else {
        for (const [k, v] of Object.entries(s.obj.data ?? {})) env[k] = Buffer.from(String(v), "base64").toString();
        Object.assign(env, s.obj.stringData ?? {});
      }
    }
  });
  for (const e of c.env ?? []) if (typeof e.value === "string") env[e.name] = e.value;
  return env;
}

function preStopSeconds(c) {
  const ps = c.lifecycle?.preStop;
  if (!ps) return 0;
  if (ps.sleep) return Number(ps.sleep.seconds) || 0;
  const cmd = ps.exec?.command ?? [];
  const i = cmd.findIndex((a) => /(^|\/)sleep$/.test(a));
  return i >= 0 ? Number(cmd[i + 1]) || 0 : 0;
}

function resolvePort(c, port) {
  if (typeof port === "number") return port;
  const p = (c.ports ?? []).find((x) => x.name === port);
  return p ? p.containerPort : undefined;
}

/**
 * Workload checks on one set (k8s/ with k8s/istio/, or one chart rendering).
 * Returns facts: the probes and scrape paths with their ports, and each
 * Deployment's environment, for the live checks against api-management.
 */
export function checkWorkloads(set, { requiredHpa = true, istio = false } = {}) {
  const facts = { probes: [], env: [] };
  const pss = (it, spec, sp) => {
    const sc = spec.securityContext ?? {};
    if (sc.runAsNonRoot !== true) set.fail(it, [...sp, "securityContext", "runAsNonRoot"], "must be true (restricted Pod Security profile)");
    if (sc.seccompProfile?.type !== "RuntimeDefault") set.fail(it, [...sp, "securityContext", "seccompProfile", "type"], "must be RuntimeDefault (restricted profile)");
    (spec.containers ?? []).forEach((c, ci) => {
      const cp = [...sp, "containers", ci, "securityContext"];
      const csc = c.securityContext ?? {};
      if (csc.allowPrivilegeEscalation !== false) set.fail(it, [...cp, "allowPrivilegeEscalation"], "must be false (restricted profile)");
      if (!(csc.capabilities?.drop ?? []).includes("ALL")) set.fail(it, [...cp, "capabilities", "drop"], "must drop ALL (restricted profile)");
      if (csc.readOnlyRootFilesystem !== true) set.fail(it, [...cp, "readOnlyRootFilesystem"], "must be true");
      const tmp = (c.volumeMounts ?? []).find((m) => m.mountPath === "/tmp");
      const vol = tmp && (spec.volumes ?? []).find((v) => v.name === tmp.name);
      if (!vol?.emptyDir) set.fail(it, [...sp, "containers", ci, "volumeMounts"], "needs an emptyDir volume mounted at /tmp (the root filesystem is read-only)");
      if (!c.resources?.requests?.cpu) set.fail(it, [...sp, "containers", ci, "resources", "requests", "cpu"], "missing: the autoscaler's CPU target is a share of it");
      if (!c.resources?.limits?.memory) set.fail(it, [...sp, "containers", ci, "resources", "limits", "memory"], "missing");
    });
  };

  const deployments = set.of("Deployment");
  if (deployments.length === 0) set.failSet("no Deployment");
  const podLabels = [];
  for (const it of deployments) {
    const d = it.obj;
    const sp = ["spec", "template", "spec"];
    const spec = get(d, sp) ?? {};
    podLabels.push({ it, labels: d.spec?.template?.metadata?.labels ?? {} });
    pss(it, spec, sp);
    const ci = (spec.containers ?? []).findIndex((c) => c.name === "api-management");
    if (ci < 0) {
      set.fail(it, [...sp, "containers"], "no container named api-management");
      continue;
    }
    const c = spec.containers[ci];
    const cp = [...sp, "containers", ci];
    const env = containerEnv(set, it, sp, ci);
    facts.env.push({ where: `${it.where([])}: ${objName(d)}`, env });
    const httpPort = env.HTTP_PORT === undefined ? 8080 : Number(env.HTTP_PORT);
    const named = (c.ports ?? []).find((p) => p.name === "http");
    if (!named) set.fail(it, [...cp, "ports"], "no port named http");
    else if (named.containerPort !== httpPort)
      set.fail(it, [...cp, "ports", c.ports.indexOf(named), "containerPort"], `${named.containerPort} is not HTTP_PORT (${httpPort}), where api-management listens`);

    const want = { startupProbe: null, livenessProbe: "/health/live", readinessProbe: "/health/ready" };
    for (const [probe, path] of Object.entries(want)) {
      const pr = c[probe];
      if (!pr) {
        set.fail(it, [...cp, probe], "missing");
        continue;
      }
      if (!pr.httpGet) {
        set.fail(it, [...cp, probe, "httpGet"], "missing: probe api-management over HTTP");
        continue;
      }
      if (path && pr.httpGet.path !== path) set.fail(it, [...cp, probe, "httpGet", "path"], `'${pr.httpGet.path}': expected ${path}`);
      const port = resolvePort(c, pr.httpGet.port);
      if (port !== httpPort) set.fail(it, [...cp, probe, "httpGet", "port"], `'${pr.httpGet.port}' is port ${port}, not HTTP_PORT ${httpPort}`);
      facts.probes.push({ where: `${it.where([...cp, probe, "httpGet", "path"])}: ${objName(d)} ${probe}`, path: pr.httpGet.path, port });
    }
    const ann = d.spec?.template?.metadata?.annotations ?? {};
    const ap = ["spec", "template", "metadata", "annotations"];
    if (ann["prometheus.io/scrape"] !== "true") set.fail(it, [...ap, "prometheus.io/scrape"], "must be \"true\" (Prometheus scrape annotations)");
    else {
      if (Number(ann["prometheus.io/port"]) !== httpPort) set.fail(it, [...ap, "prometheus.io/port"], `'${ann["prometheus.io/port"]}' is not HTTP_PORT ${httpPort}`);
      facts.probes.push({ where: `${it.where([...ap, "prometheus.io/path"])}: ${objName(d)} prometheus.io/path`, path: ann["prometheus.io/path"] ?? "/metrics", port: httpPort });
    }

    // Shutdown: preStop, then SIGTERM -> SHUTDOWN_DELAY -> SHUTDOWN_TIMEOUT.
    const delay = env.SHUTDOWN_DELAY === undefined ? 0 : durationSeconds(env.SHUTDOWN_DELAY);
    const timeout = env.SHUTDOWN_TIMEOUT === undefined ? 25 : durationSeconds(env.SHUTDOWN_TIMEOUT);
    if (Number.isNaN(delay)) set.fail(it, [...cp, "envFrom"], `SHUTDOWN_DELAY '${env.SHUTDOWN_DELAY}' is not a duration`);
    if (Number.isNaN(timeout)) set.fail(it, [...cp, "envFrom"], `SHUTDOWN_TIMEOUT '${env.SHUTDOWN_TIMEOUT}' is not a duration`);
    const pre = preStopSeconds(c);
    if (pre <= 0) set.fail(it, [...cp, "lifecycle", "preStop"], "missing: a preStop sleep lets endpoints drop the pod before SIGTERM");
    const needed = pre + delay + timeout;
    const grace = spec.terminationGracePeriodSeconds ?? 30;
    if (!(grace > needed))
      set.fail(it, [...sp, "terminationGracePeriodSeconds"],
        `${grace} s does not exceed preStop ${pre} s + SHUTDOWN_DELAY ${delay} s + SHUTDOWN_TIMEOUT ${timeout} s = ${needed} s`);
    const proxy = ann["proxy.istio.io/config"];
    if (istio && proxy === undefined) set.fail(it, [...ap, "proxy.istio.io/config"], "missing: set the sidecar's terminationDrainDuration so requests in flight finish");
    if (proxy !== undefined) {
      let cfg = {};
      try {
        cfg = parseYaml(proxy) ?? {};
      } catch (e) {
        set.fail(it, [...ap, "proxy.istio.io/config"], `not YAML: ${e.message}`);
      }
      const drain = durationSeconds(cfg.terminationDrainDuration);
      if (!(drain >= needed && drain < grace))
        set.fail(it, [...ap, "proxy.istio.io/config"],
          `terminationDrainDuration '${cfg.terminationDrainDuration}' must cover preStop + SHUTDOWN_DELAY + SHUTDOWN_TIMEOUT (${needed} s) and stay below the grace period (${grace} s)`);
    }
  }

  // The autoscaler as specified: autoscaling/v2, 3 to 10 replicas, 70% CPU.
  const hpas = set.of("HorizontalPodAutoscaler");
  if (requiredHpa) {
    if (hpas.length !== 1) set.failSet(`expected one HorizontalPodAutoscaler, found ${hpas.length}`);
    for (const it of hpas) {
      const h = it.obj;
      if (h.apiVersion !== "autoscaling/v2") set.fail(it, ["apiVersion"], `'${h.apiVersion}': expected autoscaling/v2`);
      if (h.spec?.minReplicas !== 3) set.fail(it, ["spec", "minReplicas"], `${JSON.stringify(h.spec?.minReplicas)}: expected 3`);
      if (h.spec?.maxReplicas !== 10) set.fail(it, ["spec", "maxReplicas"], `${JSON.stringify(h.spec?.maxReplicas)}: expected 10`);
      const m = h.spec?.metrics ?? [];
      const cpu = m.length === 1 && m[0].type === "Resource" && m[0].resource?.name === "cpu" &&
        m[0].resource?.target?.type === "Utilization" && m[0].resource?.target?.averageUtilization === 70;
      if (!cpu) set.fail(it, ["spec", "metrics"], "expected exactly one metric: Resource cpu, Utilization 70%");
      const ref = h.spec?.scaleTargetRef ?? {};
      const target = ref.kind === "Deployment" && set.find("Deployment", ref.name);
      if (!target) set.fail(it, ["spec", "scaleTargetRef"], `no Deployment '${ref.name}' to scale among ${set.label}`);
      else {
        if (target.obj.spec?.replicas !== undefined)
          set.fail(target, ["spec", "replicas"], "must be absent: the HorizontalPodAutoscaler owns the replica count");
        if (target.obj.spec?.template?.metadata?.labels?.version !== "v1")
          set.fail(target, ["spec", "template", "metadata", "labels", "version"], "the autoscaled Deployment must be version v1");
      }
    }
  }

  // Service, PodDisruptionBudget and Job selectors.
  for (const it of set.of("Service")) {
    const sel = it.obj.spec?.selector;
    const hit = podLabels.filter((p) => matches(sel, p.labels));
    if (hit.length === 0) set.fail(it, ["spec", "selector"], "selects no Deployment's pods");
    (it.obj.spec?.ports ?? []).forEach((port, i) => {
      for (const h of hit) {
        const c = (h.it.obj.spec.template.spec.containers ?? [])[0];
        if (resolvePort(c, port.targetPort) === undefined)
          set.fail(it, ["spec", "ports", i, "targetPort"], `'${port.targetPort}' is no port of ${objName(h.it.obj)}`);
      }
    });
  }
  for (const it of set.of("PodDisruptionBudget")) {
    if (!podLabels.some((p) => matches(it.obj.spec?.selector?.matchLabels, p.labels)))
      set.fail(it, ["spec", "selector", "matchLabels"], "selects no Deployment's pods");
  }
  const jobs = set.of("Job");
  if (jobs.length === 0) set.failSet("no Job for `trellis db migrate`");
  for (const it of jobs) {
    const sp = ["spec", "template", "spec"];
    const spec = get(it.obj, sp) ?? {};
    pss(it, spec, sp);
    const cmd = (spec.containers?.[0]?.command ?? []).join(" ");
    if (!/(^|\/)trellis db migrate$/.test(cmd)) set.fail(it, [...sp, "containers", 0, "command"], `'${cmd}': expected trellis db migrate`);
    const labels = it.obj.spec?.template?.metadata?.labels ?? {};
    for (const svc of set.of("Service"))
      if (matches(svc.obj.spec?.selector, labels))
        set.fail(it, ["spec", "template", "metadata", "labels"], `the Service ${svc.obj.metadata.name} selects the Job's pod`);
    if (istio && labels["sidecar.istio.io/inject"] !== "false")
      set.fail(it, ["spec", "template", "metadata", "labels", "sidecar.istio.io/inject"], "must be \"false\": a sidecar keeps the Job's pod from completing");
  }
  return facts;
}

/** The Istio objects: the 90/10 split on /api/v1, retries, timeouts, circuit breaking, mTLS, authorization. */
export function checkIstio(set) {
  const vss = set.of("VirtualService");
  const drs = set.of("DestinationRule");
  if (vss.length !== 1) set.failSet(`expected one VirtualService, found ${vss.length}`);
  if (drs.length !== 1) set.failSet(`expected one DestinationRule, found ${drs.length}`);
  const dr = drs[0];
  const pods = set.of("Deployment").map((d) => d.obj.spec?.template?.metadata?.labels ?? {});
  if (dr) {
    const d = dr.obj.spec ?? {};
    const subsets = d.subsets ?? [];
    for (const v of ["v1", "v2"]) {
      const i = subsets.findIndex((s) => s.name === v);
      if (i < 0) set.fail(dr, ["spec", "subsets"], `no subset ${v}`);
      else if (subsets[i].labels?.version !== v) set.fail(dr, ["spec", "subsets", i, "labels", "version"], `expected ${v}`);
      else if (!pods.some((l) => matches(subsets[i].labels, l))) set.fail(dr, ["spec", "subsets", i, "labels"], `no Deployment's pods carry version: ${v}`);
    }
    if (!d.trafficPolicy?.connectionPool) set.fail(dr, ["spec", "trafficPolicy", "connectionPool"], "missing: connection limits");
    if (!(d.trafficPolicy?.outlierDetection?.consecutive5xxErrors > 0))
      set.fail(dr, ["spec", "trafficPolicy", "outlierDetection", "consecutive5xxErrors"], "missing: circuit breaking on consecutive 5xx");
  }
  for (const vs of vss) {
    const http = vs.obj.spec?.http ?? [];
    const ri = http.findIndex((r) => (r.match ?? []).some((m) => m.uri?.prefix === "/api/v1"));
    if (ri < 0) {
      set.fail(vs, ["spec", "http"], "no route matching prefix /api/v1");
      continue;
    }
    const r = http[ri];
    const w = Object.fromEntries((r.route ?? []).map((d) => [d.destination?.subset, d.weight]));
    if (w.v1 !== 90 || w.v2 !== 10 || (r.route ?? []).length !== 2)
      set.fail(vs, ["spec", "http", ri, "route"], `expected v1 weight 90 and v2 weight 10, found ${JSON.stringify(w)}`);
    if (!r.timeout) set.fail(vs, ["spec", "http", ri, "timeout"], "missing");
    if (!(r.retries?.attempts > 0)) set.fail(vs, ["spec", "http", ri, "retries"], "missing");
    (r.route ?? []).forEach((d, i) => {
      if (dr && d.destination?.host !== dr.obj.spec?.host)
        set.fail(vs, ["spec", "http", ri, "route", i, "destination", "host"], `'${d.destination?.host}' is not the DestinationRule's host '${dr.obj.spec?.host}'`);
    });
    (vs.obj.spec?.gateways ?? []).forEach((g, i) => {
      if (g !== "mesh" && !set.find("Gateway", g.includes("/") ? g.split("/")[1] : g))
        set.fail(vs, ["spec", "gateways", i], `no Gateway '${g}'`);
    });
  }
  const pas = set.of("PeerAuthentication");
  if (!pas.some((p) => p.obj.spec?.mtls?.mode === "STRICT")) set.failSet("no PeerAuthentication with mtls.mode STRICT");
  const aps = set.of("AuthorizationPolicy");
  if (aps.length === 0) set.failSet("no AuthorizationPolicy");
  for (const ap of aps) {
    const rules = ap.obj.spec?.rules ?? [];
    const health = rules.findIndex((r) => !r.from && (r.to ?? []).some((t) => (t.operation?.paths ?? []).some((p) => p.startsWith("/health"))));
    if (health < 0) set.fail(ap, ["spec", "rules"], "no rule leaving /health/* open for the kubelet");
    const api = rules.findIndex((r) => (r.from ?? []).some((f) => (f.source?.principals ?? []).some((p) => /istio-ingressgateway/.test(p))));
    if (api < 0) set.fail(ap, ["spec", "rules"], "no rule letting the ingress gateway's service account reach the API");
  }
  if (set.of("Gateway").length === 0) set.failSet("no Gateway for ingress");
}

/** No Istio object, no canary: what the chart renders with its defaults. */
export function checkChartDefaults(set) {
  for (const it of set.items)
    if (/istio\.io\//.test(it.obj.apiVersion)) set.fail(it, ["apiVersion"], "an Istio object with istio.enabled false");
  for (const it of set.of("Deployment"))
    if (it.obj.spec?.template?.metadata?.labels?.version !== "v1") set.fail(it, ["metadata", "name"], "a canary Deployment with canary.enabled false");
}

// What differs only because Helm rendered it.
function normalise(obj) {
  const o = structuredClone(obj);
  const clean = (meta) => {
    if (!meta) return;
    for (const k of Object.keys(meta.labels ?? {})) if (k === "helm.sh/chart" || k === "app.kubernetes.io/managed-by") delete meta.labels[k];
    for (const k of Object.keys(meta.annotations ?? {})) if (k.startsWith("helm.sh/") || k.startsWith("checksum/")) delete meta.annotations[k];
    if (meta.annotations && Object.keys(meta.annotations).length === 0) delete meta.annotations;
  };
  clean(o.metadata);
  clean(o.spec?.template?.metadata);
  return o;
}

function diff(a, b, p, out) {
  if (out.length >= 20) return;
  if (a !== null && b !== null && typeof a === "object" && typeof b === "object" && Array.isArray(a) === Array.isArray(b)) {
    const keys = Array.isArray(a) ? [...Array(Math.max(a.length, b.length)).keys()] : [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    for (const k of keys) diff(a[k], b[k], [...p, k], out);
  } else if (JSON.stringify(a) !== JSON.stringify(b)) out.push({ p, a, b });
}

/** The chart, rendered with the same settings as k8s/, must give the same objects. */
export function checkParity(k8s, chart) {
  const key = (it) => `${it.obj.kind}/${it.obj.metadata?.name}`;
  // The Namespace is not the chart's (helm install --namespace); objects
  // with no name are reported by the schema check already.
  const named = (it) => typeof it.obj?.metadata?.name === "string";
  const left = new Map(k8s.items.filter((it) => named(it) && it.obj.kind !== "Namespace").map((it) => [key(it), it]));
  const right = new Map(chart.items.map((it) => [key(it), it]));
  const findings = [];
  for (const [k, it] of left) {
    const other = right.get(k);
    if (!other) {
      findings.push(`${it.where([])}: ${k}: ${chart.label} renders no ${k}`);
      continue;
    }
    const out = [];
    diff(normalise(it.obj), normalise(other.obj), [], out);
    for (const d of out)
      findings.push(
        `${it.where(d.p)}: ${k}: ${fieldPath(d.p)}: k8s/ has ${JSON.stringify(d.a)}, ` +
          `the chart (${other.where(d.p)}) has ${JSON.stringify(d.b)}`,
      );
  }
  for (const [k, it] of right) if (!left.has(k)) findings.push(`${it.where([])}: ${k}: rendered by the chart but not in k8s/`);
  return findings;
}

/** kubectl kustomize k8s/ must render exactly the objects of the files in k8s/. */
export function checkKustomize(k8s, rendered) {
  const key = (it) => `${it.obj.kind}/${it.obj.metadata?.name}`;
  const a = new Map(k8s.items.map((it) => [key(it), it]));
  const b = new Map(rendered.items.map((it) => [key(it), it]));
  const findings = [];
  for (const [k, it] of a) {
    if (!b.has(k)) findings.push(`${it.where([])}: ${k}: not rendered by kubectl kustomize k8s/ (list the file in k8s/Kustomization)`);
    else if (JSON.stringify(sortKeys(it.obj)) !== JSON.stringify(sortKeys(b.get(k).obj)))
      findings.push(`${it.where([])}: ${k}: kubectl kustomize k8s/ renders it differently from the file`);
  }
  for (const [k] of b) if (!a.has(k)) findings.push(`k8s/Kustomization: ${k}: rendered, but in no .yaml file that kubectl apply -f k8s/ reads`);
  return findings;
}

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  return v;
}
