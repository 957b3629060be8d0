/**
 * One chokepoint for native calls (STYLE.md, after cilium/ebpf's linter rule): only
 * src/maps/bpf/ may import koffi or the raw libbpf bindings.
 */
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';

const repo = path.resolve(__dirname, '../../..');

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    return e.isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : [];
  });
}

test('koffi and libbpf bindings are imported only under src/maps/bpf/', () => {
  const boundary = path.join(repo, 'src/maps/bpf') + path.sep;
  const files = sources(path.join(repo, 'src'));
  assert.ok(files.length > 10, 'found the sources');
  const offenders = files.filter((f) => {
    if (f.startsWith(boundary)) return false;
    const text = fs.readFileSync(f, 'utf8');
    return /(from\s+|require\()\s*['"]koffi['"]/.test(text) || /['"][./]*(maps\/)?bpf\/libbpf['"]/.test(text);
  });
  assert.deepEqual(offenders.map((f) => path.relative(repo, f)), []);
});
