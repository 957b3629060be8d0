/**
 * SNAT value codec against facts §4, byte for byte, and the NAT map specs against facts §1.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CtmapError } from '../../src/errors';
import type { Family } from '../../src/maps/addr';
import { NatEntry, decodeNatEntry, encodeNatEntry, natValueSize, validateNatEntry } from '../../src/maps/nat/codec';
import { globalNatMapRefs, globalNatMapSpec, natMapName } from '../../src/maps/nat/spec';
import { MapFlag, MapType } from '../../src/maps/types';

describe('NAT value codec', () => {
  test('IPv4: 40 bytes, created/needs_ct LE u64 @0/@8, to_saddr @32, to_sport BE @36', () => {
    const e: NatEntry = { addr: '198.51.100.7', port: 40001, created: 0x0102030405060708n, needsCt: true };
    const buf = Buffer.alloc(40, 0xee); // dirty: padding must come out zero
    encodeNatEntry('ipv4', e, buf);
    assert.equal(
      buf.toString('hex'),
      '0807060504030201' + // created
        '0100000000000000' + // needs_ct
        '0000000000000000' + // pad
        '0000000000000000' + // pad
        'c6336407' + // to_saddr
        '9c41' + // to_sport 40001 big-endian
        '0000', // pad
    );
    assert.deepEqual(decodeNatEntry('ipv4', buf), e);
  });

  test('IPv6: 56 bytes, to_saddr @32 (16 B), to_sport BE @48, padded to 56', () => {
    const e: NatEntry = { addr: '2001:db8::7', port: 443, created: 77n, needsCt: false };
    const buf = Buffer.alloc(56, 0xee);
    encodeNatEntry('ipv6', e, buf);
    assert.equal(
      buf.toString('hex'),
      '4d00000000000000' + // created 77
        '0000000000000000' + // needs_ct 0
        '0000000000000000' +
        '0000000000000000' +
        '20010db8000000000000000000000007' + // to_saddr
        '01bb' + // to_sport 443
        '000000000000', // pad to 56
    );
    assert.deepEqual(decodeNatEntry('ipv6', buf), e);
  });

  test('encodes at an offset and decodes any non-zero needs_ct as true', () => {
    const buf = Buffer.alloc(3 + 40);
    encodeNatEntry('ipv4', { addr: '192.0.2.1', port: 1, created: 0n, needsCt: false }, buf, 3);
    buf.writeBigUInt64LE(2n, 3 + 8);
    assert.deepEqual(decodeNatEntry('ipv4', buf, 3), { addr: '192.0.2.1', port: 1, created: 0n, needsCt: true });
    assert.equal(natValueSize('ipv4'), 40);
    assert.equal(natValueSize('ipv6'), 56);
  });

  test('validation names the field', () => {
    const ok: NatEntry = { addr: '192.0.2.1', port: 80, created: 1n, needsCt: true };
    validateNatEntry('ipv4', ok, 'entry');
    const cases: Array<[Family, Partial<NatEntry>, string]> = [
      ['ipv4', { addr: 'nope' }, 'records[0].entry.addr'],
      ['ipv4', { addr: '2001:db8::1' }, 'records[0].entry.addr'],
      ['ipv6', {}, 'records[0].entry.addr'],
      ['ipv4', { port: 65536 }, 'records[0].entry.port'],
      ['ipv4', { port: -1 }, 'records[0].entry.port'],
      ['ipv4', { created: -1n }, 'records[0].entry.created'],
      ['ipv4', { created: 1n << 64n }, 'records[0].entry.created'],
    ];
    for (const [family, patch, field] of cases) {
      assert.throws(
        () => validateNatEntry(family, { ...ok, ...patch }, 'records[0].entry'),
        (err: unknown) => err instanceof CtmapError && err.code === 'invalid-argument' && err.field === field,
        `${JSON.stringify(patch, (_k, v) => (typeof v === 'bigint' ? String(v) : v))} -> ${field}`,
      );
    }
    assert.throws(() => validateNatEntry('ipv4', undefined, 'records[1].entry'), /records\[1\]\.entry: is required/);
  });
});

describe('NAT map specs (facts §1)', () => {
  const cfg = { bpfRoot: '/sys/fs/bpf', enableIPv4: true, enableIPv6: true, natMax: 524288, distributedLru: false };

  test('names, sizes, type and pin path', () => {
    assert.equal(natMapName('ipv4'), 'cilium_snat_v4_external');
    assert.equal(natMapName('ipv6'), 'cilium_snat_v6_external');
    assert.deepEqual(globalNatMapSpec(cfg, 'ipv4'), {
      name: 'cilium_snat_v4_external',
      type: MapType.LRU_HASH,
      keySize: 14,
      valueSize: 40,
      maxEntries: 524288,
      flags: 0,
      pinPath: '/sys/fs/bpf/tc/globals/cilium_snat_v4_external',
    });
    const v6 = globalNatMapSpec(cfg, 'ipv6');
    assert.deepEqual([v6.keySize, v6.valueSize, v6.pinPath], [38, 56, '/sys/fs/bpf/tc/globals/cilium_snat_v6_external']);
  });

  test('distributed LRU sets BPF_F_NO_COMMON_LRU, never NO_PREALLOC', () => {
    assert.equal(globalNatMapSpec({ ...cfg, distributedLru: true }, 'ipv4').flags, MapFlag.NO_COMMON_LRU);
  });

  test('one global map per enabled family', () => {
    assert.deepEqual(globalNatMapRefs({ enableIPv4: false, enableIPv6: true }), [{ family: 'ipv6', clusterId: 0 }]);
    assert.deepEqual(globalNatMapRefs(cfg).map((r) => r.family), ['ipv4', 'ipv6']);
  });
});
