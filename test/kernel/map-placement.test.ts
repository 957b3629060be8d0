/**
 * The kernel LRU behaviour the migration's fill plan is built on (src/maps/kernel/
 * placement.ts), measured on the running kernel: an LRU hash map evicts before it is full
 * when its per-CPU free lists run dry, so how many entries a fresh map keeps depends on
 * where they are written from. Each case writes into a fresh map with UPDATE_BATCH and
 * counts what stayed.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BpfMap, FillShare, MapBackend, MapSpec } from '../../src/maps/types';
import { possibleCpus } from '../../src/sys/cpus';
import { MapFlag, MapType } from '../../src/maps/types';
import { assertNoFdLeak, bpfFdCount, kernelTier } from '../helpers/kernel';

type KernelModule = typeof import('../../src/maps/kernel');
type PlacementModule = typeof import('../../src/maps/kernel/placement');

function spec(maxEntries: number, flags = 0): MapSpec {
  return { name: 'placement', type: MapType.LRU_HASH, keySize: 14, valueSize: 56, maxEntries, flags };
}

/** Writes keys from..from+n-1 (distinct) in batches of 4096 from wherever the thread runs. */
function write(map: BpfMap, from: number, n: number): void {
  const B = 4096;
  const keys = Buffer.alloc(B * 14);
  const values = Buffer.alloc(B * 56);
  for (let done = 0; done < n; ) {
    const c = Math.min(B, n - done);
    for (let i = 0; i < c; i++) {
      keys.writeUInt32LE(from + done + i + 1, i * 14);
      values.writeUInt32LE(from + done + i, i * 56);
    }
    map.updateBatch(keys, values, c);
    done += c;
  }
}

/** Writes `total` entries following the plan, each share from its CPU; returns how many were written. */
function writeByPlan(backend: MapBackend, map: BpfMap, plan: FillShare[], total: number): number {
  let written = 0;
  for (const share of plan) {
    const n = Math.min(share.limit, total - written);
    const restore = backend.onCpu(share.cpu);
    try {
      write(map, written, n);
    } finally {
      restore();
    }
    written += n;
  }
  return written;
}

test('kernel LRU: a fresh map filled by its fill plan keeps every entry; past the plan it evicts', (t) => {
  if (!kernelTier(t)) return;
  const { kernelBackend } = require('../../src/maps/kernel') as KernelModule;
  const placement = require('../../src/maps/kernel/placement') as PlacementModule;
  const { threadAffinity } = require('../../src/sys') as typeof import('../../src/sys');
  const fds = bpfFdCount();
  const affinity = threadAffinity();
  const cpus = possibleCpus();

  const cases: Array<{ what: string; spec: MapSpec; want: number }> = [
    // A multiple of the refill size: exactly full, from one CPU.
    { what: 'common LRU 32768', spec: spec(32768), want: 32768 },
    // Not a multiple of 128: the plan stops at the last whole refill.
    { what: 'common LRU 100000', spec: spec(100000), want: Math.floor(100000 / 128) * 128 },
    // Per-CPU lists: only writing from every CPU fills the map.
    { what: 'per-CPU LRU 32768', spec: spec(32768, MapFlag.NO_COMMON_LRU), want: placement.effectiveMaxEntries(spec(32768, MapFlag.NO_COMMON_LRU)) },
  ];
  for (const c of cases) {
    const plan = kernelBackend.fillPlan(c.spec);
    const room = plan.reduce((n, s) => n + s.limit, 0);
    if (c.spec.flags & MapFlag.NO_COMMON_LRU) {
      assert.equal(plan.length, affinity.filter((cpu) => cpu < cpus).length, `${c.what}: one share per usable CPU`);
      if (plan.length < cpus) t.diagnostic(`${c.what}: only ${plan.length} of ${cpus} possible CPUs usable here`);
    } else {
      assert.equal(plan.length, 1, `${c.what}: one CPU`);
    }
    const map = kernelBackend.create(c.spec);
    try {
      const written = writeByPlan(kernelBackend, map, plan, room);
      assert.equal(map.count(), written, `${c.what}: every entry written by the plan is kept`);
      if (plan.length === cpus) assert.equal(written, c.want, `${c.what}: the plan fills the map`);
    } finally {
      map.close();
    }
    assert.deepEqual(threadAffinity(), affinity, `${c.what}: the thread's CPUs are restored`);
  }

  // Why the plan exists: one CPU writing exactly max_entries into a common LRU whose size is
  // not a multiple of 128 loses the rest of the last refill (128 - max % 128 entries).
  const odd = kernelBackend.create(spec(100000));
  try {
    const restore = kernelBackend.onCpu(kernelBackend.fillPlan(spec(100000))[0].cpu);
    try {
      write(odd, 0, 100000);
    } finally {
      restore();
    }
    assert.equal(odd.count(), 100000 - (128 - (100000 % 128)));
  } finally {
    odd.close();
  }
  // And a per-CPU LRU written from one CPU keeps that CPU's share only.
  if (cpus > 1) {
    const pcpu = kernelBackend.create(spec(32768, MapFlag.NO_COMMON_LRU));
    try {
      const restore = kernelBackend.onCpu(affinity[0]);
      try {
        write(pcpu, 0, 32768);
      } finally {
        restore();
      }
      assert.equal(pcpu.count(), 32768 / cpus);
    } finally {
      pcpu.close();
    }
  }
  assertNoFdLeak(fds, 'placement');
});

test('kernel: effectiveMaxEntries matches what the kernel reports for per-CPU LRU maps', (t) => {
  if (!kernelTier(t)) return;
  const { kernelBackend } = require('../../src/maps/kernel') as KernelModule;
  const fds = bpfFdCount();
  for (const s of [spec(100001, MapFlag.NO_COMMON_LRU), spec(100001), spec(4096, MapFlag.NO_COMMON_LRU)]) {
    const m = kernelBackend.create(s);
    try {
      assert.equal(m.info().maxEntries, kernelBackend.effectiveMaxEntries(s), `max ${s.maxEntries} flags ${s.flags}`);
    } finally {
      m.close();
    }
  }
  assertNoFdLeak(fds, 'effectiveMaxEntries');
});
