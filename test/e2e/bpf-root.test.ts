/**
 * Issue 12, the bpf-root as bin/ctmapd processes see it:
 *
 * - item 4: one owner per bpf-root: a second daemon on a held root exits 1 before it opens
 *   a map, naming the holder's pid; the root is free again once the holder stopped;
 * - item 5: a missing --bpf-root under bpffs is created as a plain directory on that bpffs,
 *   not mounted over; a daemon in a private mount namespace (a container's) therefore
 *   pins where every other namespace sees it, and the next daemon finds the same maps.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { tempDir } from '../helpers/grpc';
import { cleanupScope, datapathE2eTier, startDaemonProcess } from '../helpers/datapath-e2e';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';
import { CTMAPD_BIN } from '../../src/config/paths';

type KernelModule = typeof import('../../src/maps/kernel');

/** Mount points at or under `dir` in the mount namespace of `pid`. */
function mountsUnder(dir: string, pid: number | 'self' = 'self'): string[] {
  return fs
    .readFileSync(`/proc/${pid}/mountinfo`, 'latin1')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((m) => m && (m === dir || m.startsWith(`${dir}/`)));
}

test('issue 12 item 5: a --bpf-root created under bpffs by a daemon in a private mount namespace is a plain directory, and its pins outlive the daemon', { timeout: 60_000 }, async (t) => {
  if (!datapathE2eTier(t, ['unshare'])) return;
  const { kernelBackend } = require('../../src/maps/kernel') as KernelModule;
  const scope = cleanupScope(t);
  const bpf = privateBpfRoot(scope);
  const tmp = tempDir(scope);
  const root = path.join(bpf.root, 'node', 'root');
  const pin = path.join(root, 'tc/globals/cilium_ct4_global');
  // As a container without the host's mount propagation runs it.
  const inContainer = ['unshare', '--mount', '--propagation', 'private', '--'];

  const first = await startDaemonProcess(scope, root, path.join(tmp.dir, 'a.sock'), [], inContainer);
  assert.notEqual(fs.statSync(`/proc/${first.child.pid}/ns/mnt`).ino, fs.statSync('/proc/self/ns/mnt').ino, 'the daemon runs in a mount namespace of its own');
  assert.deepEqual(mountsUnder(bpf.root, first.child.pid!), [], 'nothing mounted in the daemon namespace');
  assert.equal(fs.statSync(root).dev, fs.statSync(bpf.root).dev, 'the root is on the bpffs of its parent');
  const seen = kernelBackend.pinnedInfo(pin);
  assert.ok(seen, `${pin} is visible from the test's mount namespace`);
  assert.match(first.log(), /created --bpf-root as a directory on the bpffs/);
  assert.equal(await first.stop(), 0);
  assert.equal(kernelBackend.pinnedInfo(pin)?.id, seen.id, 'the map outlives the daemon and its namespace');

  // The next "container" finds the same maps, entries and all.
  const second = await startDaemonProcess(scope, root, path.join(tmp.dir, 'b.sock'), [], inContainer);
  assert.equal(kernelBackend.pinnedInfo(pin)?.id, seen.id, 'reused, not recreated');
  assert.doesNotMatch(second.log(), /created --bpf-root|mounted bpffs/);
  assert.equal(await second.stop(), 0);
});

test("issue 12 item 4: a second ctmapd on a held bpf-root exits 1 before opening a map, naming the holder's pid", { timeout: 60_000 }, async (t) => {
  if (!kernelTier(t)) return;
  const { kernelBackend } = require('../../src/maps/kernel') as KernelModule;
  const scope = cleanupScope(t);
  const bpf = privateBpfRoot(scope);
  const tmp = tempDir(scope);
  const globals = path.join(bpf.root, 'tc/globals');
  const pin = path.join(globals, 'cilium_ct4_global');
  const first = await startDaemonProcess(scope, bpf.root, path.join(tmp.dir, 'a.sock'), ['--conntrack-gc-interval', '3600']);
  const pins = fs.readdirSync(globals).sort();
  const map = kernelBackend.pinnedInfo(pin);
  assert.ok(map);

  // Another socket, and bigger TCP maps: had it opened them, it would have migrated them.
  const secondSocket = path.join(tmp.dir, 'b.sock');
  const second = spawnSync(process.execPath, [CTMAPD_BIN, '--bpf-root', bpf.root, '--socket', secondSocket, '--bpf-ct-global-tcp-max', '131072', '--bpf-ct-global-any-max', '32768'], {
    encoding: 'utf8',
    timeout: 20_000,
  });
  const out = second.stdout + second.stderr;
  assert.equal(second.status, 1, `the second daemon exits 1: ${out}`);
  assert.ok(out.includes(`ctmapd cannot start: --bpf-root ${bpf.root} is owned by pid ${first.child.pid} (it holds the flock on ${bpf.root})`), out);
  assert.doesNotMatch(out, /migrat|ctmapd serving/);
  assert.deepEqual(fs.readdirSync(globals).sort(), pins, 'no pin added or removed');
  assert.deepEqual(kernelBackend.pinnedInfo(pin), map, 'the same map, same size');
  assert.ok(!fs.existsSync(secondSocket), 'it never served');
  assert.match(first.log(), /ctmapd serving/);
  assert.equal(first.child.exitCode, null, 'the owner keeps running');

  // Stopped (or killed: the kernel drops the lock with the process), the root is free.
  first.child.kill('SIGKILL');
  await first.stop();
  const third = await startDaemonProcess(scope, bpf.root, path.join(tmp.dir, 'c.sock'));
  assert.equal(await third.stop(), 0);
});
