/**
 * Issue 6 item 4, --bpf-root: bpffs is mounted where it is missing (a missing or empty
 * directory not on bpffs), a missing directory under bpffs is created there instead of
 * mounted over (issue 12 item 5), a bpf-root elsewhere is refused with a message that says what to do, a
 * failed mount says why, and a pin directory with another filesystem mounted on it is
 * refused. Needs root (it mounts); every mount is undone and every directory removed,
 * also on failure.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TestContext, test } from 'node:test';
import pino from 'pino';
import { CtmapError } from '../../src/errors';
import { ensureBpffs, isBpffs } from '../../src/maps/bpffs';
import { parseConfig } from '../../src/config/config';
import { startDaemon } from '../../src/daemon/daemon';
import { LogSink, tempDir } from '../helpers/grpc';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';

/** A directory outside bpffs (the temp filesystem), removed afterwards; anything mounted under it is unmounted first. */
function plainDir(t: TestContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-bpffs-'));
  assert.ok(!isBpffs(dir), `${dir} must not be on bpffs for this test`);
  t.after(() => {
    for (const m of mountsUnder(dir).reverse()) spawnSync('umount', [m]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

function mountsUnder(dir: string): string[] {
  return fs
    .readFileSync('/proc/self/mounts', 'latin1')
    .split('\n')
    .map((l) => l.split(' ')[1])
    .filter((m) => m && (m === dir || m.startsWith(`${dir}/`)));
}

function expectPrecondition(fn: () => unknown, ...patterns: RegExp[]): CtmapError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof CtmapError, `expected a CtmapError, got ${String(caught)}`);
  assert.equal(caught.code, 'failed-precondition');
  for (const p of patterns) assert.match(caught.message, p);
  return caught;
}

test('bpffs: a root already on bpffs is used as it is', (t) => {
  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot(t);
  const logs = new LogSink();
  ensureBpffs(bpf.root, pino(logs));
  assert.equal(logs.find(/mounted bpffs/), undefined, 'nothing mounted');
});

test('bpffs: a missing root under bpffs is created as a plain directory there, nothing mounted (issue 12 item 5)', (t) => {
  if (!kernelTier(t)) return;
  const bpf = privateBpfRoot();
  const root = path.join(bpf.root, 'missing/deeper');
  // Unmount whatever a regression mounted before the directory is removed.
  t.after(() => {
    for (const m of mountsUnder(bpf.root).reverse()) spawnSync('umount', [m]);
    bpf.cleanup();
  });
  const logs = new LogSink();
  ensureBpffs(root, pino(logs));
  assert.ok(isBpffs(root));
  assert.deepEqual(mountsUnder(bpf.root), [], 'no bpffs mounted on the new directory');
  assert.equal(fs.statSync(root).dev, fs.statSync(bpf.root).dev, 'the same bpffs as its parent');
  assert.equal(logs.find(/mounted bpffs/), undefined);
  assert.ok(logs.find(/created --bpf-root as a directory on the bpffs/), 'the creation is logged');
});

test('bpffs: a missing or empty directory gets bpffs mounted, and pins work there', (t) => {
  if (!kernelTier(t)) return;
  const base = plainDir(t);
  const { kernelBackend } = require('../../src/maps/kernel') as typeof import('../../src/maps/kernel');
  for (const root of [path.join(base, 'missing/deeper'), fs.mkdirSync(path.join(base, 'empty')) ?? path.join(base, 'empty')]) {
    const logs = new LogSink();
    ensureBpffs(root, pino(logs));
    assert.ok(isBpffs(root), `${root} is on bpffs now`);
    assert.deepEqual(mountsUnder(root), [root]);
    assert.ok(logs.find(/mounted bpffs/), 'the mount is logged');
    const map = kernelBackend.create({ name: 'probe', type: 1, keySize: 4, valueSize: 4, maxEntries: 1, flags: 0, pinPath: path.join(root, 'tc/globals/probe') });
    map.close();
    assert.ok(kernelBackend.pinnedInfo(path.join(root, 'tc/globals/probe')));
  }
});

test('bpffs: a non-empty directory on another filesystem is refused and left alone', (t) => {
  if (!kernelTier(t)) return;
  const root = plainDir(t);
  fs.writeFileSync(path.join(root, 'keep-me'), 'x');
  expectPrecondition(() => ensureBpffs(root, pino({ level: 'silent' })), /--bpf-root/, /not on a bpf filesystem and is not empty/, /mount -t bpf bpf/);
  assert.ok(!isBpffs(root));
  assert.deepEqual(mountsUnder(root), []);
  assert.equal(fs.readFileSync(path.join(root, 'keep-me'), 'utf8'), 'x');
});

test('bpffs: where mounting is not permitted, the failure says so', (t) => {
  if (!kernelTier(t)) return;
  const base = plainDir(t);
  const root = path.join(base, 'empty');
  fs.mkdirSync(root, { mode: 0o755 });
  fs.chmodSync(base, 0o755);
  // As nobody, without capabilities: mount(8) refuses.
  const script = `
    const { ensureBpffs } = require(${JSON.stringify(path.resolve(__dirname, '../../src/maps/bpffs'))});
    try { ensureBpffs(${JSON.stringify(root)}, { info() {} }); console.log(JSON.stringify({ ok: true })); }
    catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`;
  const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', process.execPath, '-e', script], { encoding: 'utf8', cwd: '/' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout.trim());
  assert.equal(out.code, 'failed-precondition');
  assert.match(out.message, /--bpf-root .* is not on a bpf filesystem and mounting one failed: .+/);
  assert.deepEqual(mountsUnder(root), []);
});

test('daemon: refuses a bpf-root not on bpffs, and a pin directory with another filesystem mounted on it', async (t) => {
  if (!kernelTier(t)) return;
  const sock = tempDir(t);
  const start = (root: string) => startDaemon(parseConfig(['--backend', 'kernel', '--bpf-root', root, '--socket', path.join(sock.dir, 'd.sock')], {}), pino({ level: 'silent' }));

  const plain = plainDir(t);
  fs.writeFileSync(path.join(plain, 'other'), 'x');
  await assert.rejects(start(plain), (err: unknown) => err instanceof CtmapError && err.code === 'failed-precondition' && /--bpf-root/.test(err.message));

  const bpf = privateBpfRoot();
  const globals = path.join(bpf.root, 'tc/globals');
  // Unmount before the directory is removed (after-hooks run in the order registered).
  t.after(() => {
    if (mountsUnder(globals).length) spawnSync('umount', [globals]);
    bpf.cleanup();
  });
  fs.mkdirSync(globals, { recursive: true });
  execFileSync('mount', ['-t', 'tmpfs', 'ctmapd-test', globals]);
  await assert.rejects(start(bpf.root), (err: unknown) => err instanceof CtmapError && err.code === 'failed-precondition' && err.message.includes(globals));
  assert.deepEqual(fs.readdirSync(globals), [], 'nothing pinned into the tmpfs');
});
