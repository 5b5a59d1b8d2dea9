#!/usr/bin/env node
// A stand-in for a Kubernetes API server that knows the resource types the
// deployment uses and holds no object, so that the real kubectl can run
// `kubectl apply -f k8s/ --dry-run=client` here, with no cluster: kubectl
// reads the folder, decodes every file, maps each kind through discovery,
// finds no live object and prints "created (dry run)". A file whose kind
// the API does not serve (a Kustomization, say) fails as it would on a real
// cluster. It answers discovery and 404s only, on 127.0.0.1.
//
//   node deploy/lib/discovery-server.mjs PORTFILE
//
// Writes the port it listens on to PORTFILE and serves until killed.
import http from "node:http";
import fs from "node:fs";

const groups = {
  "": { v1: [["namespaces", "Namespace", false], ["configmaps", "ConfigMap", true], ["secrets", "Secret", true],
    ["services", "Service", true], ["serviceaccounts", "ServiceAccount", true], ["pods", "Pod", true]] },
  apps: { v1: [["deployments", "Deployment", true]] },
  batch: { v1: [["jobs", "Job", true]] },
  autoscaling: { v2: [["horizontalpodautoscalers", "HorizontalPodAutoscaler", true]] },
  policy: { v1: [["poddisruptionbudgets", "PodDisruptionBudget", true]] },
  "networking.istio.io": { v1: [["virtualservices", "VirtualService", true], ["destinationrules", "DestinationRule", true], ["gateways", "Gateway", true]] },
  "security.istio.io": { v1: [["peerauthentications", "PeerAuthentication", true], ["authorizationpolicies", "AuthorizationPolicy", true]] },
};

const verbs = ["create", "delete", "get", "list", "patch", "update", "watch"];
const resourceList = (gv, list) => ({
  kind: "APIResourceList",
  apiVersion: "v1",
  groupVersion: gv,
  resources: list.map(([name, kind, namespaced]) => ({
    name, singularName: kind.toLowerCase(), namespaced, kind, verbs,
  })),
});

function answer(req) {
  const url = new URL(req.url, "http://localhost");
  const p = url.pathname.replace(/\/$/, "");
  if (p === "/api") return [200, { kind: "APIVersions", versions: ["v1"], serverAddressByClientCIDRs: [] }];
  if (p === "/api/v1") return [200, resourceList("v1", groups[""].v1)];
  if (p === "/apis")
    return [200, {
      kind: "APIGroupList",
      apiVersion: "v1",
      groups: Object.entries(groups).filter(([g]) => g).map(([name, vs]) => {
        const versions = Object.keys(vs).map((v) => ({ groupVersion: `${name}/${v}`, version: v }));
        return { name, versions, preferredVersion: versions[0] };
      }),
    }];
  const m = /^\/apis\/([^/]+)\/([^/]+)$/.exec(p);
  if (m && groups[m[1]]?.[m[2]]) return [200, resourceList(`${m[1]}/${m[2]}`, groups[m[1]][m[2]])];
  if (p === "/version") return [200, { major: "1", minor: "32", gitVersion: "v1.32.0" }];
  return [404, { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message: "not found", reason: "NotFound", code: 404 }];
}

const server = http.createServer((req, res) => {
  const [status, body] = answer(req);
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(JSON.stringify(body));
});
server.listen(0, "127.0.0.1", () => {
  fs.writeFileSync(process.argv[2] ?? "/dev/stdout", String(server.address().port));
});
for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => server.close(() => process.exit(0)));
