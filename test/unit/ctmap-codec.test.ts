import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { addressBytes, addressFamily, formatIPv6, writeIPv4, writeIPv6 } from '../../src/maps/addr';
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

/** The split-based parser the one-pass writeIPv6 replaced (issue 12, item 7): the reference. */
function referenceIPv6(text: string): Buffer {
  const buf = Buffer.alloc(16);
  const gap = text.indexOf('::');
  const groups = (s: string): number[] =>
    s === ''
      ? []
      : s.split(':').flatMap((g) => {
          if (!g.includes('.')) return [parseInt(g, 16)];
          const b = g.split('.').map(Number);
          return [(b[0] << 8) | b[1], (b[2] << 8) | b[3]];
        });
  const h = groups(gap >= 0 ? text.slice(0, gap) : text);
  const t = gap >= 0 ? groups(text.slice(gap + 2)) : [];
  h.forEach((g, i) => buf.writeUInt16BE(g, i * 2));
  t.forEach((g, i) => buf.writeUInt16BE(g, 16 - (t.length - i) * 2));
  return buf;
}

describe('address writers', () => {
  test('writeIPv6 agrees with the reference on every text form (compressed anywhere, leading zeros, case, IPv4 tail)', () => {
    let seed = 12;
    const rand = (n: number) => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 8) % n;
    const buf = Buffer.alloc(20, 0xaa);
    let checked = 0;
    for (let round = 0; round < 3000; round++) {
      // Groups with zero runs, so that "::" has somewhere to go.
      const g = Array.from({ length: 8 }, () => (rand(3) === 0 ? 0 : rand(4) === 0 ? rand(16) : rand(0x10000)));
      const hex = g.map((x) => (rand(4) === 0 ? x.toString(16).padStart(4, '0') : x.toString(16)));
      const forms = [hex.join(':')];
      for (let a = 0; a < 8; a++) for (let b = a + 1; b <= 8; b++) if (g.slice(a, b).every((x) => x === 0)) forms.push(`${hex.slice(0, a).join(':')}::${hex.slice(b).join(':')}`);
      const quad = `${g[6] >> 8}.${g[6] & 255}.${g[7] >> 8}.${g[7] & 255}`;
      for (const f of [...forms]) {
        forms.push(f.toUpperCase());
        // The same address with its last two groups as a dotted quad (when they are not in a "::").
        const head = hex.slice(0, 6).join(':');
        if (f.startsWith(head) && !f.slice(head.length).includes('::')) forms.push(`${head}:${quad}`);
      }
      for (let a = 0; a <= 6; a++) {
        if (g.slice(a, 6).every((x) => x === 0)) forms.push(`${hex.slice(0, a).join(':')}::${quad}`);
      }
      for (const text of forms) {
        if (addressFamily(text) !== 'ipv6') continue;
        buf.fill(0xaa);
        writeIPv6(text, buf, 2);
        assert.equal(buf.subarray(2, 18).toString('hex'), referenceIPv6(text).toString('hex'), text);
        assert.equal(buf[1], 0xaa, `${text}: nothing written before`);
        assert.equal(buf[18], 0xaa, `${text}: nothing written after`);
        checked++;
      }
    }
    assert.ok(checked > 20000, `${checked} texts checked`);
    for (const text of ['::', '::1', '1::', '::ffff:192.0.2.7', '64:ff9b::198.51.100.1', '1:2:3:4:5:6:7::', '::2:3:4:5:6:7:8', '1:2:3:4:5:6:1.2.3.4']) {
      assert.equal(addressFamily(text), 'ipv6', text);
      buf.fill(0xaa);
      writeIPv6(text, buf, 2);
      assert.equal(buf.subarray(2, 18).toString('hex'), referenceIPv6(text).toString('hex'), text);
    }
  });

  test('writeIPv4 writes the four octets', () => {
    const buf = Buffer.alloc(6, 0xaa);
    for (const [text, hex] of [['0.0.0.0', '00000000'], ['192.0.2.7', 'c0000207'], ['255.255.255.255', 'ffffffff'], ['10.200.3.40', '0ac80328']]) {
      writeIPv4(text, buf, 1);
      assert.equal(buf.subarray(1, 5).toString('hex'), hex, text);
      assert.equal(buf[0], 0xaa);
      assert.equal(buf[5], 0xaa);
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
