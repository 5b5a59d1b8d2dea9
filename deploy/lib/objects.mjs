// Reading Kubernetes objects from YAML files, remembering where each one
// and each of its fields came from, so that every finding names a file, a
// line and a field.
import fs from "node:fs";
import path from "node:path";
import { parseAllDocuments, LineCounter, isMap, isSeq, isScalar } from "yaml";

/**
 * @typedef {object} Origin
 * @property {string} file     the file to name: a manifest, or the chart template
 * @property {string} [rendered] for rendered output: which rendering ("chart with values ...")
 * @property {string} [renderedFile] the rendered file the object was read from
 * @property {number} line     line of the object in `file` (or in renderedFile)
 *
 * @typedef {object} Item
 * @property {any} obj          the object as plain JSON
 * @property {Origin} origin
 * @property {(p: (string|number)[]) => string} where  "file:line" of a field
 */

/** A field path as text: spec.template.spec.containers[0].readinessProbe */
export function fieldPath(p) {
  let s = "";
  for (const k of p) {
    if (typeof k === "number") s += `[${k}]`;
    else if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(k)) s += (s ? "." : "") + k;
    else s += `[${JSON.stringify(k)}]`;
  }
  return s || "(object)";
}

/** "Deployment/api-management" */
export function objName(obj) {
  const kind = obj && typeof obj === "object" ? obj.kind ?? "(no kind)" : "(not an object)";
  const name = obj?.metadata?.name ?? "(no name)";
  return `${kind}/${name}`;
}

// The YAML node at a path, or the deepest one that exists on the way.
function nodeAt(doc, p) {
  let node = doc.contents;
  let best = node;
  for (const k of p) {
    if (isMap(node)) {
      const pair = node.items.find((it) => (isScalar(it.key) ? it.key.value : it.key) === k);
      if (!pair) break;
      best = pair.key ?? best;
      node = pair.value;
    } else if (isSeq(node)) {
      node = node.items[k];
      if (!node) break;
      best = node;
    } else break;
  }
  return best;
}

// Where a key is written in the chart: the line of `key:` in the template
// that rendered the object, or else in another template file (a helper in
// _helpers.tpl, say). A finding in rendered output names that place.
function templatePlace(root, chartDir, file, key) {
  if (typeof key !== "string") return null;
  const re = new RegExp(`^\\s*(- )?"?${key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}"?:`);
  const lineIn = (f) => {
    try {
      const i = fs.readFileSync(path.join(root, f), "utf8").split("\n").findIndex((l) => re.test(l));
      return i + 1;
    } catch {
      return 0;
    }
  };
  const own = lineIn(file);
  if (own) return `${file}:${own}`;
  if (!chartDir) return null;
  const dir = path.join(chartDir, "templates");
  let others = [];
  try {
    others = fs.readdirSync(path.join(root, dir), { recursive: true }).map((f) => path.join(dir, String(f))).sort();
  } catch {
    return null;
  }
  for (const f of others) {
    if (f === file || !/\.(ya?ml|tpl)$/.test(f)) continue;
    const n = lineIn(f);
    if (n) return `${f}:${n} (through ${file})`;
  }
  return null;
}

/**
 * Read every object of a YAML file.
 * @param {string} root   repository root (file names are shown relative to it)
 * @param {string} file   path relative to root, or absolute for rendered output
 * @param {{rendered?: string, chartDir?: string}} [opts]
 *   rendered: label of a rendering; chartDir: the chart folder, relative to
 *   root, whose "# Source: <chart>/templates/x.yaml" comments name the template.
 * @returns {{items: Item[], errors: string[]}}
 */
export function loadYaml(root, file, opts = {}) {
  const abs = path.isAbsolute(file) ? file : path.join(root, file);
  const text = fs.readFileSync(abs, "utf8");
  const lc = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lc, uniqueKeys: true, prettyErrors: false });
  const items = [];
  const errors = [];
  const shown = opts.rendered ? `${file} (${opts.rendered})` : file;
  for (const doc of docs) {
    if (doc.errors.length) {
      for (const e of doc.errors) {
        const line = e.pos ? lc.linePos(e.pos[0]).line : 0;
        errors.push(`${shown}:${line}: YAML: ${e.message.split("\n")[0]}`);
      }
      continue;
    }
    if (doc.contents == null) continue; // an empty document
    const obj = doc.toJS();
    if (obj == null) continue;
    const line = lc.linePos(doc.contents.range[0]).line;
    /** @type {Origin} */
    let origin = { file, line };
    if (opts.rendered) {
      const m = /Source: (\S+)/.exec(doc.contents.commentBefore ?? "");
      let template = file;
      if (m && opts.chartDir) {
        // "api-management/templates/deployment.yaml" -> "helm/api-management/templates/deployment.yaml"
        template = path.join(opts.chartDir, m[1].split("/").slice(1).join("/"));
      }
      origin = { file: template, rendered: opts.rendered, renderedFile: file, line };
    }
    const where = (p) => {
      const n = nodeAt(doc, p);
      const outLine = n?.range ? lc.linePos(n.range[0]).line : line;
      if (!origin.rendered) return `${origin.file}:${outLine}`;
      const place = templatePlace(root, opts.chartDir, origin.file, [...p].reverse().find((k) => typeof k === "string"));
      return `${place ?? origin.file} (${origin.rendered}; ${path.basename(file)}:${outLine})`;
    };
    items.push({ obj, origin, where });
  }
  return { items, errors };
}

/** The .yaml, .yml and .json files directly in a folder, as `kubectl apply -f DIR` reads them. */
export function manifestFiles(root, dir) {
  return fs
    .readdirSync(path.join(root, dir), { withFileTypes: true })
    .filter((e) => e.isFile() && /\.(ya?ml|json)$/.test(e.name))
    .map((e) => path.join(dir, e.name))
    .sort();
}
