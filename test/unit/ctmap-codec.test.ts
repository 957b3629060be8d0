import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { addressBytes, addressFamily, formatIPv6 } from '../../src/maps/addr';
import { decodeEntry, decodeKey, encodeEntry, encodeKey, entryFlagNames, validateEntry, validateKey } from '../../src/maps/ctmap/codec';
import { formatEntryLine } from '../../src/maps/ctmap/format';
import { CtmapError } from '../../src/errors';

describe('addresses', () => {
  test('families', () => {
    assert.equal(addressFamily('192.0.2.1'), 'ipv4');
    assert.equal(addressFamily('2001:db8::1'), 'ipv6');
    assert.equal(addressFamily('::ffff:192.0.2.1'), 'ipv6');
    for (const bad of ['', '192.0.2', '192.0.2.256', '2001:db8:::1', 'fe80::1%eth0', 'localhost']) assert.equal(addressFamily(bad), undefined, bad);
  });

  test('IPv6 round trip is RFC 5952 canonical', () => {
    const cases: Array<[string, string]> = [
      ['2001:db8::1', '2001:db8::1'],
      ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
      ['::', '::'],
      ['::1', '::1'],
      ['2001:db8:0:1:0:0:0:1', '2001:db8:0:1::1'],
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
      ['2001:db8:1:1:1:1:0:1', '2001:db8:1:1:1:1:0:1'],
      ['::ffff:192.0.2.7', '::ffff:192.0.2.7'],
      ['2001:DB8::A', '2001:db8::a'],
    ];
    for (const [input, want] of cases) {
      const parsed = addressBytes(input)!;
      assert.equal(formatIPv6(parsed.bytes, 0), want, input);
    }
  });
});

describe('CT key codec', () => {
  test('IPv4 key is byte-exact with ipv4_ct_tuple (ports big-endian, no swap of names)', () => {
    const buf = Buffer.alloc(14);
    encodeKey('ipv4', { daddr: '192.0.2.1', saddr: '198.51.100.2', dport: 8472, sport: 54864, nexthdr: 17, flags: 1 }, buf);
    assert.equal(buf.toString('hex'), 'c0000201' + 'c6336402' + '2118' + 'd650' + '11' + '01');
    assert.deepEqual(decodeKey('ipv4', buf), { daddr: '192.0.2.1', saddr: '198.51.100.2', dport: 8472, sport: 54864, nexthdr: 17, flags: 1 });
  });

  test('IPv6 key is byte-exact with ipv6_ct_tuple', () => {
    const buf = Buffer.alloc(38);
    encodeKey('ipv6', { daddr: '2001:db8::1', saddr: '2001:db8::2', dport: 443, sport: 40000, nexthdr: 6, flags: 4 }, buf);
    assert.equal(
      buf.toString('hex'),
      '20010db8000000000000000000000001' + '20010db8000000000000000000000002' + '01bb' + '9c40' + '06' + '04',
    );
    assert.equal(decodeKey('ipv6', buf).saddr, '2001:db8::2');
  });

  test('validation names the field', () => {
    const ok = { daddr: '192.0.2.1', saddr: '192.0.2.2', dport: 1, sport: 2, nexthdr: 6, flags: 0 };
    assert.equal(validateKey(ok, 'key'), 'ipv4');
    const cases: Array<[object, string]> = [
      [{ daddr: '192.0.2.300' }, 'key.daddr'],
      [{ saddr: 'nope' }, 'key.saddr'],
      [{ saddr: '2001:db8::1' }, 'key.saddr'],
      [{ dport: 65536 }, 'key.dport'],
      [{ sport: -1 }, 'key.sport'],
      [{ nexthdr: 256 }, 'key.nexthdr'],
      [{ flags: 300 }, 'key.flags'],
      [{ dport: 1.5 }, 'key.dport'],
    ];
    for (const [patch, field] of cases) {
      assert.throws(
        () => validateKey({ ...ok, ...patch }, 'key'),
        (err: unknown) => err instanceof CtmapError && err.code === 'invalid-argument' && err.field === field && err.message.startsWith(field),
        field,
      );
    }
    assert.throws(() => validateKey(undefined, 'records[2].key'), /records\[2\]\.key: is required/);
  });
});

describe('CT entry codec', () => {
  const entry = {
    union0: Buffer.from('c0000209000000000000000000000000', 'hex'),
    backendId: 0n,
    packets: 5n,
    bytes: 0x0102030405n,
    lifetime: 0x01020304,
    flags: 0x0013,
    revNat: 0x1234,
    natPort: 0x5678,
    txFlagsSeen: 0x02,
    rxFlagsSeen: 0x12,
    sourceSecurityId: 2,
    lastTxReport: 100,
    lastRxReport: 101,
  };

  test('56 bytes at the offsets of struct ct_entry', () => {
    const buf = Buffer.alloc(56);
    encodeEntry(entry, buf);
    const want =
      'c0000209000000000000000000000000' + // union0 (nat_addr)
      '0500000000000000' + // packets LE
      '0504030201000000' + // bytes LE
      '04030201' + // lifetime LE
      '1300' + // flags LE
      '1234' + // rev_nat_index BE
      '5678' + // nat_port BE
      '02' + // tx_flags_seen
      '12' + // rx_flags_seen
      '02000000' + // src_sec_id
      '64000000' + // last_tx_report
      '65000000'; // last_rx_report
    assert.equal(buf.toString('hex'), want);
    assert.deepEqual(decodeEntry(buf), entry);
  });

  test('backend_id is union0 bytes 8..16 (service entries)', () => {
    const buf = Buffer.alloc(56);
    encodeEntry({ backendId: 0x0a0bn }, buf);
    assert.equal(buf.subarray(0, 16).toString('hex'), '0000000000000000' + '0b0a000000000000');
    assert.equal(decodeEntry(buf).backendId, 0x0a0bn);
  });

  test('flag names in bit order', () => {
    assert.deepEqual(entryFlagNames(0x13), ['RxClosing', 'TxClosing', 'SeenNonSyn']);
    assert.deepEqual(entryFlagNames(0x480), ['DSRInternal', 'FromTunnel']);
  });

  test('entry validation names the field', () => {
    assert.throws(() => validateEntry({ flags: 0x10000 }, 'records[0].entry'), /records\[0\]\.entry\.flags/);
    assert.throws(() => validateEntry({ union0: Buffer.alloc(3) }, 'e'), /e\.union0/);
    assert.throws(() => validateEntry({ packets: -1n }, 'e'), /e\.packets/);
  });
});

describe('text dump (facts §7)', () => {
  test('IPv4 TCP OUT line with remaining time', () => {
    const k = Buffer.alloc(14);
    const v = Buffer.alloc(56);
    encodeKey('ipv4', { daddr: '192.0.2.1', saddr: '192.0.2.2', dport: 80, sport: 41000, nexthdr: 6, flags: 0 }, k);
    encodeEntry({ packets: 9n, bytes: 704n, lifetime: 1000, flags: 0x13, rxFlagsSeen: 3, txFlagsSeen: 0x1b, lastRxReport: 990, lastTxReport: 991, sourceSecurityId: 2, revNat: 7, natPort: 0 }, v);
    assert.equal(
      formatEntryLine('ipv4', k, 0, v, 0, 900),
      'TCP OUT 192.0.2.1:41000 -> 192.0.2.2:80 expires=1000 (remaining: 100 sec(s)) Packets=9 Bytes=704 RxFlagsSeen=0x03 LastRxReport=990 TxFlagsSeen=0x1b LastTxReport=991 Flags=0x0013 [ RxClosing TxClosing SeenNonSyn ] RevNAT=7 SourceSecurityID=2 BackendID=0 NatPort=0\n',
    );
  });

  test('IPv6 related service IN, no flags, no time diff; nexthdr 0 skipped', () => {
    const k = Buffer.alloc(38);
    const v = Buffer.alloc(56);
    encodeKey('ipv6', { daddr: '2001:db8::1', saddr: '2001:db8::2', dport: 0, sport: 0, nexthdr: 58, flags: 1 | 2 | 4 }, k);
    encodeEntry({ lifetime: 5, backendId: 12n }, v);
    assert.equal(
      formatEntryLine('ipv6', k, 0, v, 0),
      'ICMPv6 IN [2001:db8::1]:0 -> [2001:db8::2]:0 related service expires=5 Packets=0 Bytes=0 RxFlagsSeen=0x00 LastRxReport=0 TxFlagsSeen=0x00 LastTxReport=0 Flags=0x0000 [ ] RevNAT=0 SourceSecurityID=0 BackendID=12 NatPort=0\n',
    );
    k[36] = 0;
    assert.equal(formatEntryLine('ipv6', k, 0, v, 0), '');
  });

  test('expired entries show negative remaining time', () => {
    const k = Buffer.alloc(14);
    const v = Buffer.alloc(56);
    encodeKey('ipv4', { daddr: '192.0.2.1', saddr: '192.0.2.2', dport: 53, sport: 5353, nexthdr: 17, flags: 0 }, k);
    encodeEntry({ lifetime: 10 }, v);
    assert.match(formatEntryLine('ipv4', k, 0, v, 0, 25), /^UDP OUT 192\.0\.2\.1:5353 -> 192\.0\.2\.2:53 expires=10 \(remaining: -15 sec\(s\)\) /);
  });
});
