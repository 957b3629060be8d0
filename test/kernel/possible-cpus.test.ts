/**
 * ctmapd's one "possible CPUs" function (src/sys/cpus.ts, which the memory backend uses
 * without libbpf) gives libbpf's own answer, libbpf_num_possible_cpus(), and sizes a
 * per-CPU map's value exactly as the kernel copies it out.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { possibleCpus } from '../../src/sys/cpus';
import { MapType } from '../../src/maps/types';
import { kernelTier } from '../helpers/kernel';

test('possibleCpus() equals libbpf_num_possible_cpus() and the kernel per-CPU value size', (t) => {
  if (!kernelTier(t)) return;
  // The test binds libbpf itself: src/ has no binding left for this call.
  const koffi = require('koffi') as typeof import('koffi');
  const libbpf = koffi.load('libbpf.so.1');
  const numPossible = libbpf.func('int libbpf_num_possible_cpus(void)') as () => number;
  assert.equal(possibleCpus(), numPossible());

  const bpf = require('../../src/sys') as typeof import('../../src/sys');
  const fd = bpf.createMap({ type: MapType.PERCPU_ARRAY, name: 'ctmapd_cpus', keySize: 4, valueSize: 8, maxEntries: 1, flags: 0 });
  try {
    const key = Buffer.alloc(4);
    // One 8-byte copy per possible CPU: a buffer one copy short is written past its end by
    // the kernel, so the exact size is what lookup with this many copies must succeed on.
    const value = Buffer.alloc(possibleCpus() * 8, 0xff);
    assert.equal(bpf.lookup(fd, key, value), true);
    assert.deepEqual(value, Buffer.alloc(possibleCpus() * 8), 'the kernel zeroed every copy it wrote');
  } finally {
    fd.close();
  }
});
