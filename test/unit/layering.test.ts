/**
 * The layering of ../shared/design/ARCHITECTURE.md, checked on every import of src/ (the
 * way cilium/ebpf's linter bans the syscall package outside internal/unix):
 *
 *   errors <- config <- sys <- link <- maps <- cluster | datapath <- api <- server <- daemon
 *                                                    cli (uses api, link, datapath, maps)
 *
 * A module may import from its own room or from a room below it, never from one above or
 * beside it; the CLI never from server/ or daemon/. koffi is imported in src/sys/ alone,
 * and the memory backend loads without it.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { REPO_ROOT } from '../../src/config/paths';

const SRC = path.join(REPO_ROOT, 'src');

/** Floor of each room: an import may only point to a lower floor (or its own room). */
const FLOOR: Readonly<Record<string, number>> = {
  errors: 0,
  config: 1,
  sys: 2,
  link: 3,
  maps: 4,
  cluster: 5,
  datapath: 5,
  api: 6,
  server: 7,
  daemon: 8,
  cli: 9,
};
/** Rooms a room must not import although they stand below it. */
const FORBIDDEN: Readonly<Record<string, readonly string[]>> = { cli: ['server', 'daemon'] };

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** The room of a file under `src`: its top directory, or its name for a top-level file. */
function roomOf(src: string, file: string): string {
  const [top] = path.relative(src, file).split(path.sep);
  return top.replace(/\.ts$/, '');
}

interface Import {
  readonly spec: string;
  /** A top-level `import`/`export ... from` (loaded with the module), not a lazy require. */
  readonly eager: boolean;
}

/** Every module specifier a file names: import/export from, require(), import(). */
function importsOf(file: string): Import[] {
  const text = fs.readFileSync(file, 'utf8');
  const out: Import[] = [];
  for (const m of text.matchAll(/^(?:import|export)\s[^;]*?from\s+['"]([^'"]+)['"]/gms)) {
    out.push({ spec: m[1], eager: !/^import\s+type\s/.test(m[0]) && !/^export\s+type\s/.test(m[0]) });
  }
  for (const m of text.matchAll(/\b(?:require|import)\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push({ spec: m[1], eager: false });
  return out;
}

/** The file a relative specifier names (x.ts or x/index.ts), or undefined for a package. */
function resolve(from: string, spec: string): string | undefined {
  if (!spec.startsWith('.')) return undefined;
  const base = path.resolve(path.dirname(from), spec);
  for (const candidate of [`${base}.ts`, path.join(base, 'index.ts')]) if (fs.existsSync(candidate)) return candidate;
  assert.fail(`${from}: cannot resolve ${spec}`);
}

/** "file (room) -> target (room)" for every import under `src` that points up or sideways. */
function backEdges(src: string): string[] {
  const out: string[] = [];
  for (const file of sources(src)) {
    const from = roomOf(src, file);
    for (const { spec } of importsOf(file)) {
      const target = resolve(file, spec);
      if (!target) continue;
      const to = roomOf(src, target);
      if (to === from) continue;
      if (!(FLOOR[to] < FLOOR[from]) || FORBIDDEN[from]?.includes(to)) {
        out.push(`${path.relative(src, file)} (${from}) -> ${path.relative(src, target)} (${to})`);
      }
    }
  }
  return out;
}

const FILES = sources(SRC);

test('every room of src/ has a floor', () => {
  assert.ok(FILES.length > 50, 'found the sources');
  const rooms = [...new Set(FILES.map((f) => roomOf(SRC, f)))].sort();
  assert.deepEqual(rooms.filter((r) => FLOOR[r] === undefined), []);
});

test('no import points up or sideways (ARCHITECTURE.md layering)', () => {
  assert.deepEqual(backEdges(SRC), []);
});

test('the layering check reports an upward, a sideways and a forbidden import, and nothing else', (t) => {
  // The rule itself, on a tree made for it: what today's clean tree cannot show.
  const src = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-layering-'));
  t.after(() => fs.rmSync(src, { recursive: true, force: true }));
  const write = (file: string, text: string): void => {
    fs.mkdirSync(path.dirname(path.join(src, file)), { recursive: true });
    fs.writeFileSync(path.join(src, file), text);
  };
  write('errors.ts', 'export class E {}\n');
  write('server/server.ts', "import { E } from '../errors';\nexport const s = E;\n");
  write('datapath/loader.ts', "import { s } from '../server/server';\nexport const l = s;\n");
  write('cluster/maps.ts', "export const c = () => require('../datapath/loader');\n");
  write('cli/main.ts', "import type { s } from '../server/server';\nexport type M = typeof s;\n");
  write('daemon/main.ts', "import { s } from '../server/server';\nimport { c } from '../cluster/maps';\nexport const d = [s, c];\n");
  assert.deepEqual(backEdges(src).sort(), [
    'cli/main.ts (cli) -> server/server.ts (server)',
    'cluster/maps.ts (cluster) -> datapath/loader.ts (datapath)',
    'datapath/loader.ts (datapath) -> server/server.ts (server)',
  ]);
});

test('koffi is imported in src/sys/ alone', () => {
  const boundary = path.join(SRC, 'sys') + path.sep;
  const offenders = FILES.filter((f) => !f.startsWith(boundary) && importsOf(f).some((i) => i.spec === 'koffi'));
  assert.deepEqual(offenders.map((f) => path.relative(REPO_ROOT, f)), []);
  assert.ok(FILES.some((f) => f.startsWith(boundary) && importsOf(f).some((i) => i.spec === 'koffi')), 'src/sys/ does load koffi');
});

test('each native library is loaded once, in src/sys/', () => {
  const loads = FILES.flatMap((f) => [...fs.readFileSync(f, 'utf8').matchAll(/koffi\.load\(\s*['"]([^'"]+)['"]/g)].map((m) => `${m[1]} in ${path.relative(REPO_ROOT, f)}`));
  const libraries = loads.map((l) => l.split(' in ')[0]);
  assert.deepEqual([...new Set(libraries)].sort(), ['libbpf.so.1', 'libc.so.6'], loads.join(', '));
  assert.equal(loads.length, new Set(libraries).size, `one load per library: ${loads.join(', ')}`);
});

/** Every file a module loads with it (eager imports only, transitively). */
function eagerClosure(entry: string): Set<string> {
  const seen = new Set<string>();
  const visit = (file: string): void => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const i of importsOf(file)) {
      const target = i.eager ? resolve(file, i.spec) : undefined;
      if (target) visit(target);
    }
  };
  visit(entry);
  return seen;
}

for (const entry of ['maps/memory/index.ts', 'config/config.ts', 'api/proto.ts', 'cli/main.ts', 'datapath/settings.ts', 'datapath/records.ts']) {
  test(`src/${entry} loads without koffi (works where bpf() is not permitted)`, () => {
    const loaded = [...eagerClosure(path.join(SRC, entry))].filter((f) => importsOf(f).some((i) => i.spec === 'koffi'));
    assert.deepEqual(loaded.map((f) => path.relative(REPO_ROOT, f)), []);
  });
}
