// The Dockerfile against the project and the manifests: the build steps are
// the ones `make build` / `make test` run, the image runs as the user the
// pods run as, api-management is PID 1 (exec form), the health check is
// `trellis health`, and no secret is baked into the image.
import fs from "node:fs";
import path from "node:path";

/** Instructions with their first line: [{line, op, args}] */
export function parseDockerfile(text) {
  const out = [];
  const lines = text.split("\n");
  let cur = null;
  lines.forEach((raw, i) => {
    const line = raw.replace(/\r$/, "");
    if (!cur && (/^\s*#/.test(line) || line.trim() === "")) return;
    if (cur && /^\s*#/.test(line)) return; // comments inside a continued instruction
    const body = line.replace(/\\\s*$/, "");
    if (!cur) {
      const m = /^\s*([A-Za-z]+)\s*(.*)$/.exec(body);
      cur = { line: i + 1, op: m ? m[1].toUpperCase() : "", args: m ? m[2] : body };
    } else cur.args += " " + body.trim();
    if (!/\\\s*$/.test(line)) {
      cur.args = cur.args.trim();
      out.push(cur);
      cur = null;
    }
  });
  if (cur) out.push(cur);
  return out;
}

function jsonArgs(s) {
  try {
    const v = JSON.parse(s);
    return Array.isArray(v) && v.every((x) => typeof x === "string") ? v : null;
  } catch {
    return null;
  }
}

// -D flags and the build folder of a `cmake -S . -B DIR ...` configure line.
function cmakeConfigure(text) {
  const m = /cmake\s+-S\s+\.\s+-B\s+(\S+)((?:\s+-D\S+)*)/.exec(text);
  if (!m) return null;
  return { dir: m[1], flags: m[2].trim().split(/\s+/).filter(Boolean).sort() };
}

/**
 * @param {string} root
 * @returns {{findings: string[], facts: {user?: string, port?: number, entrypoint?: string[], healthcheck?: string[]}}}
 */
export function checkDockerfile(root) {
  const file = "Dockerfile";
  const findings = [];
  const facts = {};
  let text;
  try {
    text = fs.readFileSync(path.join(root, file), "utf8");
  } catch (e) {
    return { findings: [`${file}: cannot read: ${e.message}`], facts };
  }
  const ins = parseDockerfile(text);
  const at = (i, msg) => findings.push(`${file}:${i.line}: ${i.op}: ${msg}`);
  const froms = ins.filter((i) => i.op === "FROM");
  if (froms.length < 2) findings.push(`${file}: expected a build stage and a runtime stage, found ${froms.length} FROM`);
  else {
    if (!/^debian:(bookworm|12)(\s|$)/.test(froms[0].args) || !/\sAS\s+build$/i.test(froms[0].args))
      at(froms[0], `'${froms[0].args}': the build stage must be Debian 12 (debian:bookworm AS build)`);
    const last = froms[froms.length - 1];
    if (!/^debian:(bookworm|12)-slim(\s|$)/.test(last.args)) at(last, `'${last.args}': the runtime stage must be debian:bookworm-slim`);
  }
  const runs = ins.filter((i) => i.op === "RUN");
  if (!runs.some((r) => /scripts\/install-deps build\b/.test(r.args))) findings.push(`${file}: RUN: the build stage must run scripts/install-deps build`);

  // The configure step: the same flags as `make build` or scripts/test.
  const mine = runs.map((r) => ({ r, c: cmakeConfigure(r.args) })).find((x) => x.c);
  if (!mine) findings.push(`${file}: RUN: no 'cmake -S . -B DIR' configure step`);
  else {
    const proven = [];
    for (const f of ["Makefile", "scripts/test"]) {
      let t = "";
      try {
        t = fs.readFileSync(path.join(root, f), "utf8");
      } catch {
        continue;
      }
      for (const line of t.split("\n")) {
        const c = cmakeConfigure(line.replace(/\$\(RELEASE_DIR\)/g, "build-release"));
        if (c && c.flags.includes("-DCMAKE_BUILD_TYPE=Release")) proven.push({ f, c });
      }
    }
    const same = proven.find((p) => p.c.dir === mine.c.dir && p.c.flags.join(" ") === mine.c.flags.join(" "));
    if (!same)
      at(mine.r, `cmake -S . -B ${mine.c.dir} ${mine.c.flags.join(" ")}: not the configure step of make build or scripts/test ` +
        `(${proven.map((p) => `${p.f}: -B ${p.c.dir} ${p.c.flags.join(" ")}`).join("; ") || "none found"})`);
    if (!runs.some((r) => new RegExp(`cmake --build ${mine.c.dir}\\b`).test(r.args))) at(mine.r, `no 'cmake --build ${mine.c.dir}'`);
  }

  const users = ins.filter((i) => i.op === "USER");
  const user = users[users.length - 1];
  if (!user) findings.push(`${file}: USER: missing: the image must run as a non-root user`);
  else if (!/^[1-9][0-9]*(:[0-9]+)?$/.test(user.args)) at(user, `'${user.args}': use a numeric non-root uid (runAsNonRoot can only verify a numeric user)`);
  else facts.user = user.args.split(":")[0];
  if (user && ins.indexOf(user) < ins.indexOf(froms[froms.length - 1])) at(user, "must be set in the runtime stage");

  const ep = ins.filter((i) => i.op === "ENTRYPOINT").pop();
  const epArgs = ep && jsonArgs(ep.args);
  if (!ep) findings.push(`${file}: ENTRYPOINT: missing`);
  else if (!epArgs) at(ep, "must be exec form (a JSON array) so that api-management is PID 1 and receives SIGTERM");
  else {
    facts.entrypoint = epArgs;
    if (!/(^|\/)api-management$/.test(epArgs[0])) at(ep, `'${epArgs[0]}': expected api-management`);
  }
  const hc = ins.filter((i) => i.op === "HEALTHCHECK").pop();
  if (!hc) findings.push(`${file}: HEALTHCHECK: missing`);
  else {
    const m = /CMD\s+(\[.*\])\s*$/.exec(hc.args);
    const argv = m && jsonArgs(m[1]);
    if (!argv) at(hc, "CMD must be exec form (a JSON array)");
    else if (!/(^|\/)trellis$/.test(argv[0]) || argv[1] !== "health") at(hc, `'${argv.join(" ")}': expected trellis health`);
    else facts.healthcheck = argv;
  }
  const env = {};
  for (const i of ins.filter((x) => x.op === "ENV" || x.op === "ARG")) {
    for (const m of i.args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g)) env[m[1]] = m[2].replace(/^"|"$/g, "");
    for (const name of i.args.match(/[A-Za-z_][A-Za-z0-9_]*(?==)/g) ?? [])
      if (/PASSWORD|SECRET|TOKEN|API_KEYS|DATABASE_URL|DATABASE_READ_URLS|RABBITMQ_URL|NATS_URL/i.test(name))
        at(i, `${name}: a secret must not be baked into the image; set it at run time`);
  }
  const expose = ins.filter((i) => i.op === "EXPOSE").pop();
  const port = expose ? Number(expose.args.split("/")[0]) : NaN;
  if (!expose) findings.push(`${file}: EXPOSE: missing`);
  else if (env.HTTP_PORT && Number(env.HTTP_PORT) !== port) at(expose, `${port} is not ENV HTTP_PORT ${env.HTTP_PORT}`);
  facts.port = port;
  return { findings, facts };
}
