/**
 * Issue 6's kill -9 "must show", with bin/ctmapd as a real process on a private bpf-root
 * and unix socket:
 * - 20 kill -9 restarts of a daemon holding 100 k entries lose none, byte for byte;
 * - 30 kill -9 at random moments of a 500 k-entry migration, and one at every step of it
 *   (CTMAPD_TEST_MIGRATION_PAUSE), each followed by a restart that ends with all 500 k
 *   entries in a map of the configured size and no `_old` / `_new` pin left.
 * Entries are written into the pinned map directly (as the datapath does) and checked the
 * same way (test/helpers/migration.ts), independently of the daemon.
 */
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { TestContext, test } from 'node:test';
import type { BpfMap } from '../../src/maps/types';
import { MapType } from '../../src/maps/types';
import { DaemonChild, spawnDaemon } from '../helpers/daemon-process';
import { call, ctClient, tempDir } from '../helpers/grpc';
import { kernelTier, privateBpfRoot } from '../helpers/kernel';
import { KEY4, VALUE, checkEntries, fillEntries } from '../helpers/migration';

type KernelModule = typeof import('../../src/maps/kernel');

function setup(t: TestContext) {
  const bpf = privateBpfRoot();
  const sock = tempDir();
  // One hook, in this order: every daemon killed before its pins and sockets are removed
  // (a daemon left running by a failure could otherwise pin into a directory being removed).
  const kills: Array<() => Promise<void>> = [];
  t.after(async () => {
    for (const kill of kills) await kill();
    sock.cleanup();
    bpf.cleanup();
  });
  const { kernelBackend } = require('../../src/maps/kernel') as KernelModule;
  const tcp4 = path.join(bpf.root, 'tc/globals/cilium_ct4_global');
  const withMap = <T>(fn: (m: BpfMap) => T): T => {
    const m = kernelBackend.open({ name: 'probe', type: MapType.LRU_HASH, keySize: KEY4, valueSize: VALUE, maxEntries: 1, flags: 0, pinPath: tcp4 });
    if (!m) throw new Error(`${tcp4} is not pinned`);
    try {
      return fn(m);
    } finally {
      m.close();
    }
  };
  let n = 0;
  const spawn = (tcpMax: number, env: Record<string, string> = {}): DaemonChild =>
    spawnDaemon(
      (fn) => kills.push(fn),
      path.join(sock.dir, `d${n++}.sock`),
      ['--backend', 'kernel', '--bpf-root', bpf.root, '--enable-ipv6=false', '--bpf-ct-global-tcp-max', String(tcpMax), '--bpf-ct-global-any-max', '4096', '--bpf-nat-global-max', '8192'],
      env,
    );
  return { kernelBackend, tcp4, withMap, spawn };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('kill -9: 20 restarts of a daemon holding 100 k entries lose none, bytes identical', async (t) => {
  if (!kernelTier(t)) return;
  const { withMap, spawn, tcp4, kernelBackend } = setup(t);
  const N = 100_000;
  let d = spawn(131072);
  const spawnedAt = performance.now();
  await d.waitFor(/ctmapd serving/);
  const startupMs = performance.now() - spawnedAt;
  withMap((m) => fillEntries(m, N));
  const id = kernelBackend.pinnedInfo(tcp4)!.id;
  await d.kill9();

  let beforeServing = 0;
  for (let run = 0; run < 20; run++) {
    d = spawn(131072);
    // Anywhere from start-up (maps being opened) to serving and beyond.
    await sleep(Math.random() * startupMs * 2);
    if (!d.lines.some((l) => /ctmapd serving/.test(l.msg))) beforeServing++;
    await d.kill9();
    assert.equal(kernelBackend.pinnedInfo(tcp4)?.id, id, `run ${run}: still the same pinned map`);
    assert.deepEqual(withMap((m) => checkEntries(m, N)), { count: N, foreign: 0, wrongValue: 0 }, `run ${run}: every entry, byte for byte`);
  }
  t.diagnostic(`${beforeServing} of 20 kills landed before the daemon was serving (start-up ~${Math.round(startupMs)} ms)`);

  // And the daemon that finally stays up serves all of them.
  d = spawn(131072);
  await d.waitFor(/ctmapd serving/);
  const client = ctClient(d.address);
  try {
    const counts = await call(client, 'Count', { maps: [{ family: 'FAMILY_IPV4', kind: 'MAP_KIND_TCP' }] });
    assert.equal(counts.counts[0].entries, String(N));
  } finally {
    client.close();
  }
  await d.kill9();
});

test('kill -9 during a 500 k-entry migration, 30 times at random and once at every step: every restart ends with all 500 k entries', async (t) => {
  if (!kernelTier(t)) return;
  const { withMap, spawn, tcp4, kernelBackend } = setup(t);
  const N = 500_000;
  // Both sizes hold 500 k entries (the smaller one within its fill plan): every run,
  // growing or shrinking, must end with all of them.
  const SIZES = [1 << 20, 1 << 19];
  // Stretch each migration a little (1 ms per 4096-entry batch) so kills spread over it.
  const PACE = { CTMAPD_TEST_MIGRATION_DELAY_MS: '1' };
  let size = SIZES[1];
  /** Every kill is of a migration: each run asks for the other size. */
  const flip = (): number => (size = size === SIZES[0] ? SIZES[1] : SIZES[0]);
  let d = spawn(size);
  await d.waitFor(/ctmapd serving/);
  withMap((m) => fillEntries(m, N));
  await d.kill9();

  /** After a kill: restart with the same size, which must finish or undo the migration, then check. */
  const restartAndCheck = async (what: string): Promise<string[]> => {
    const r = spawn(size);
    await r.waitFor(/ctmapd serving/, 60_000);
    await r.kill9();
    const pinned = kernelBackend.pinnedInfo(tcp4);
    assert.equal(pinned?.maxEntries, size, `${what}: the map has the configured size`);
    assert.ok(!kernelBackend.pinnedInfo(`${tcp4}_old`) && !kernelBackend.pinnedInfo(`${tcp4}_new`), `${what}: no _old or _new pin left`);
    assert.deepEqual(withMap((m) => checkEntries(m, N)), { count: N, foreign: 0, wrongValue: 0 }, `${what}: all ${N} entries, byte for byte`);
    return r.lines.map((l) => String(l.msg));
  };

  // Calibration: one migration left to finish, timed from its first step to its last.
  d = spawn(flip(), PACE);
  const started = await d.waitFor(/map migration step/);
  const finished = await d.waitFor(/migrated: every entry kept/, 60_000);
  const migrationMs = finished.at - started.at;
  await d.kill9();
  assert.deepEqual(withMap((m) => checkEntries(m, N)), { count: N, foreign: 0, wrongValue: 0 }, 'calibration run');

  const phases = new Map<string, number>();
  for (let run = 0; run < 30; run++) {
    d = spawn(flip(), PACE);
    await d.waitFor(/map migration step/, 30_000);
    await sleep(Math.random() * migrationMs);
    await d.kill9();
    const last = d.lines.filter((l) => l.msg === 'map migration step').at(-1)?.step ?? 'none';
    phases.set(last, (phases.get(last) ?? 0) + 1);
    await restartAndCheck(`random run ${run} (killed after step ${last})`);
  }
  t.diagnostic(`random kills by the last step logged before them: ${JSON.stringify(Object.fromEntries(phases))} (migration ~${Math.round(migrationMs)} ms)`);

  // Deterministic: stopped at each step, then killed there.
  const steps = ['start', 'old-pinned', 'new-created', 'copy-batch:60', 'copied', 'swapped', 'reloaded', 'delta-batch:60', 'delta-copied', 'done'];
  for (const step of steps) {
    d = spawn(flip(), { CTMAPD_TEST_MIGRATION_PAUSE: step });
    await d.waitFor(/test hook: migration paused/, 60_000);
    await d.kill9();
    const recovery = await restartAndCheck(`killed at ${step}`);
    const before = ['start', 'old-pinned', 'new-created', 'copy-batch:60', 'copied'].includes(step);
    if (step !== 'start' && step !== 'done') {
      const want = before ? /was rolled back/ : /finished a migration interrupted after its swap/;
      assert.ok(recovery.some((msg) => want.test(msg)), `killed at ${step}: the restart ${before ? 'rolled back' : 'resumed'}`);
    }
  }
});
