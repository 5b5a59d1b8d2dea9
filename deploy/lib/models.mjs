// Checking objects against the real schemas: the JSON schemas shipped by
// kubernetes-models (Kubernetes) and @kubernetes-models/istio (Istio), and,
// because those schemas accept unknown fields, a strict TypeScript check of
// each object as an object literal of the package's type: `tsc --strict`
// rejects a field the type does not have (excess property check), so a
// misspelled `readinesProbe` is an error naming the field.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { fieldPath, objName } from "./objects.mjs";

const deployDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);

/** The module that models an apiVersion and kind, or null. */
export function modelModule(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !/^[A-Za-z0-9]+$/.test(kind)) return null;
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  if (!/^[a-z0-9.]*$/.test(group) || !/^v[0-9]+((alpha|beta)[0-9]+)?$/.test(version ?? "")) return null;
  if (group.endsWith("istio.io")) return `@kubernetes-models/istio/${group}/${version}/${kind}`;
  return group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
}

async function loadModel(apiVersion, kind) {
  const mod = modelModule(apiVersion, kind);
  if (!mod) return null;
  try {
    const m = await import(mod);
    return m[kind] ? { mod, cls: m[kind] } : null;
  } catch {
    return null;
  }
}

function pointerToPath(ptr) {
  if (!ptr) return [];
  return ptr
    .split("/")
    .slice(1)
    .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"))
    .map((s) => (/^[0-9]+$/.test(s) ? Number(s) : s));
}

/**
 * Validate each item against its schema. Returns findings
 * ("file:line: Kind/name: field: message") and, for the items that have a
 * model, the module to type-check them with.
 * @param {import("./objects.mjs").Item[]} items
 */
export async function schemaCheck(items) {
  const findings = [];
  const typed = [];
  for (const it of items) {
    const o = it.obj;
    if (!o || typeof o !== "object" || Array.isArray(o)) {
      findings.push(`${it.where([])}: not a Kubernetes object (a YAML mapping is expected)`);
      continue;
    }
    const model = await loadModel(o.apiVersion, o.kind);
    if (!model) {
      const hint = o.kind === "Kustomization" ? " (kubectl apply -f on this folder would fail on it)" : "";
      findings.push(
        `${it.where(["kind"])}: ${objName(o)}: apiVersion/kind: no Kubernetes or Istio schema for ` +
          `apiVersion '${o.apiVersion}' kind '${o.kind}'${hint}`,
      );
      continue;
    }
    try {
      new model.cls(o).validate();
    } catch (e) {
      const errs = Array.isArray(e?.errors) && e.errors.length ? e.errors : [{ instancePath: "", message: String(e?.message ?? e) }];
      for (const err of errs) {
        const p = pointerToPath(err.instancePath);
        if (err.params?.additionalProperty) p.push(err.params.additionalProperty);
        if (err.params?.missingProperty) p.push(err.params.missingProperty);
        let msg = err.message ?? "invalid";
        if (err.params?.allowedValues) msg += ` (${err.params.allowedValues.join(", ")})`;
        findings.push(`${it.where(p)}: ${objName(o)}: ${fieldPath(p)}: ${msg} [schema ${o.apiVersion} ${o.kind}]`);
      }
    }
    typed.push({ it, mod: model.mod, kind: o.kind });
  }
  return { findings, typed };
}

// An object as TypeScript source, one property per line, with the field
// path of every line, so that a compiler error maps back to a field.
function literal(value, p, indent, lines, paths, prefix, waived = new Set()) {
  const pad = "  ".repeat(indent);
  const scalar = (v) => (v === undefined ? "undefined" : JSON.stringify(v));
  if (waived.has(fieldPath(p))) {
    // Already reported: `as any` so that the rest of the object is checked.
    lines.push(`${pad}${prefix}(${JSON.stringify(value)} as any)`);
    paths.push(p);
    return;
  }
  if (Array.isArray(value)) {
    if (value.length === 0) {
      lines.push(`${pad}${prefix}[]`);
      paths.push(p);
      return;
    }
    lines.push(`${pad}${prefix}[`);
    paths.push(p);
    value.forEach((v, i) => {
      if (v !== null && typeof v === "object") literal(v, [...p, i], indent + 1, lines, paths, "", waived);
      else if (waived.has(fieldPath([...p, i]))) {
        lines.push(`${pad}  (${scalar(v)} as any)`);
        paths.push([...p, i]);
      } else {
        lines.push(`${pad}  ${scalar(v)}`);
        paths.push([...p, i]);
      }
      lines[lines.length - 1] += i < value.length - 1 ? "," : "";
    });
    lines.push(`${pad}]`);
    paths.push(p);
  } else if (value !== null && typeof value === "object") {
    const keys = Object.keys(value);
    if (keys.length === 0) {
      lines.push(`${pad}${prefix}{}`);
      paths.push(p);
      return;
    }
    lines.push(`${pad}${prefix}{`);
    paths.push(p);
    keys.forEach((k, i) => {
      const v = value[k];
      const head = `${JSON.stringify(k)}: `;
      if (v !== null && typeof v === "object") literal(v, [...p, k], indent + 1, lines, paths, head, waived);
      else if (waived.has(fieldPath([...p, k]))) {
        lines.push(`${pad}  ${head}(${scalar(v)} as any)`);
        paths.push([...p, k]);
      } else {
        lines.push(`${pad}  ${head}${scalar(v)}`);
        paths.push([...p, k]);
      }
      lines[lines.length - 1] += i < keys.length - 1 ? "," : "";
    });
    lines.push(`${pad}}`);
    paths.push(p);
  } else {
    lines.push(`${pad}${prefix}${scalar(value)}`);
    paths.push(p);
  }
}

/**
 * Type-check every object as a literal of its model's interface with
 * `tsc --strict --noEmit`. Returns findings naming file, line and field.
 * tsc reports one error per object literal, so an object with an error is
 * checked again without the offending field, until no new error appears.
 * @param {{it: import("./objects.mjs").Item, mod: string, kind: string}[]} typed
 */
export function strictTypeCheck(typed) {
  const findings = [];
  let round = typed.map((t) => ({ ...t, obj: structuredClone(t.it.obj), waived: new Set() }));
  for (let pass = 0; pass < 8 && round.length > 0; pass++) {
    const res = tscRound(round);
    findings.push(...res.findings);
    round = res.again;
  }
  return findings;
}

function deleteAt(obj, p) {
  let o = obj;
  for (const k of p.slice(0, -1)) {
    if (o == null || typeof o !== "object") return false;
    o = o[k];
  }
  if (o == null || typeof o !== "object" || p.length === 0) return false;
  const last = p[p.length - 1];
  if (!(last in o)) return false;
  if (Array.isArray(o)) o.splice(Number(last), 1);
  else delete o[last];
  return true;
}

function shorten(msg) {
  // "... does not exist in type '{ huge inline type }'." -> keep the start
  const m = /^(.*? does not exist in type )'(.*)'\.?$/s.exec(msg);
  if (m) msg = m[1] + (m[2].length > 60 ? "'" + m[2].slice(0, 57) + "...'" : "'" + m[2] + "'");
  return msg.length > 400 ? msg.slice(0, 397) + "..." : msg;
}

function tscRound(round) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "trellis-tscheck-"));
  try {
    fs.symlinkSync(path.join(deployDir, "node_modules"), path.join(dir, "node_modules"), "dir");
    fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ type: "module", private: true }));
    const files = [];
    const maps = new Map();
    round.forEach((entry, n) => {
      const { it, mod, kind, obj } = entry;
      const lines = [
        `// ${it.origin.file}:${it.origin.line} ${objName(it.obj)}`,
        `import type { I${kind} } from ${JSON.stringify(mod)};`,
      ];
      const paths = [null, null];
      literal(obj, [], 0, lines, paths, `export const object${n}: I${kind} = `, entry.waived);
      lines[lines.length - 1] += ";";
      const name = `object${n}.ts`;
      fs.writeFileSync(path.join(dir, name), lines.join("\n") + "\n");
      files.push(name);
      maps.set(name, { entry, paths });
    });
    const tsconfig = {
      compilerOptions: {
        strict: true,
        noEmit: true,
        target: "es2022",
        module: "nodenext",
        moduleResolution: "nodenext",
        skipLibCheck: true,
        types: [],
      },
      files,
    };
    fs.writeFileSync(path.join(dir, "tsconfig.json"), JSON.stringify(tsconfig, null, 2));
    const tsc = require.resolve("typescript/bin/tsc");
    const r = spawnSync(process.execPath, [tsc, "-p", path.join(dir, "tsconfig.json"), "--pretty", "false"], {
      cwd: dir,
      encoding: "utf8",
      maxBuffer: 64 << 20,
    });
    if (r.error) return { findings: [`tsc: ${r.error.message}`], again: [] };
    const out = (r.stdout ?? "") + (r.stderr ?? "");
    const found = [];
    const again = new Set();
    let errors = 0;
    let last = null;
    for (const line of out.split("\n")) {
      const m = /^(?:.*[\\/])?(object\d+\.ts)\((\d+),(\d+)\): error (TS\d+): (.*)$/.exec(line);
      if (m) {
        errors++;
        const map = maps.get(m[1]);
        const p = map?.paths[Number(m[2]) - 1];
        if (!map || !p) {
          last = { text: `tsc: ${line}` };
        } else {
          const entry = map.entry;
          const it = entry.it;
          last = { text: `${it.where(p)}: ${objName(it.obj)}: ${fieldPath(p)}: ${shorten(m[5])} [tsc --strict ${m[4]}]` };
          // Check the object again without this error: an unknown field is
          // removed, a wrong value is let through as `any`.
          const before = entry.waived.size;
          if (m[4] === "TS2353" ? deleteAt(entry.obj, p) : (entry.waived.add(fieldPath(p)), entry.waived.size > before))
            again.add(entry);
        }
        found.push(last);
      } else if (/^\s+\S/.test(line) && last) {
        last.text += ` ${line.trim()}`;
      } else if (line.trim()) {
        found.push({ text: `tsc: ${line.trim()}` });
      }
    }
    if (r.status !== 0 && errors === 0 && found.length === 0) found.push({ text: `tsc exited ${r.status} without a message` });
    return { findings: found.map((f) => (f.text.length > 600 ? f.text.slice(0, 597) + "..." : f.text)), again: [...again] };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
