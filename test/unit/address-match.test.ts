/**
 * AddressSet, the match_ips matcher of a GC pass (issue 12, item 7): exact membership per
 * family on raw bytes, duplicates, the first invalid text reported by index, growth to the
 * cap, and turns given to the event loop while a long list is parsed.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { addressBytes } from '../../src/maps/addr';
import { AddressSet } from '../../src/maps/ctmap/gc/address-match';

const invalid = (i: number, text: string) => new Error(`invalid ${i}: ${text}`);

/** The address's bytes at offset 3 of a larger buffer, as the scan hands them over (inside a key). */
function inKey(text: string): [Buffer, number] {
  const a = addressBytes(text)!;
  const buf = Buffer.alloc(a.bytes.length + 7, 0x5c);
  a.bytes.copy(buf, 3);
  return [buf, 3];
}

function has(set: AddressSet, text: string): boolean {
  const family = addressBytes(text)!.family;
  const t = set.forFamily(family);
  return t !== undefined && t.matches(...inKey(text));
}

test('matches exactly the listed addresses of each family', async () => {
  const set = await AddressSet.from(['192.0.2.7', '2001:db8::1', '::ffff:198.51.100.3', '192.0.2.7', '2001:DB8:0::1'], invalid);
  assert.equal(set.size('ipv4'), 1, 'duplicates count once');
  assert.equal(set.size('ipv6'), 2, 'another spelling of the same address is the same');
  for (const yes of ['192.0.2.7', '2001:db8::1', '::ffff:198.51.100.3']) assert.ok(has(set, yes), yes);
  for (const no of ['192.0.2.8', '7.2.0.192', '198.51.100.3', '2001:db8::2', '2001:db8::', '::1']) assert.ok(!has(set, no), no);
  const v4only = await AddressSet.from(['192.0.2.1'], invalid);
  assert.equal(v4only.forFamily('ipv6'), undefined, 'no test for a family with no address');
});

test('rejects with the index of the first text that is not an address', async () => {
  await assert.rejects(AddressSet.from(['192.0.2.1', '2001:db8::1', '192.0.2.x', 'nope'], invalid), /^Error: invalid 2: 192\.0\.2\.x$/);
  await assert.rejects(AddressSet.from(['fe80::1%eth0'], invalid), /invalid 0/);
  await assert.rejects(AddressSet.from([''], invalid), /invalid 0/);
});

test('65,536 addresses of each family: every member found, no non-member, turns given to the event loop', async () => {
  const texts: string[] = [];
  for (let i = 0; i < 65_536; i++) texts.push(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, `2001:db8:${((i * 7919) & 0xffff).toString(16)}::${i.toString(16)}`);
  let turns = 0;
  const ticker = setInterval(() => turns++, 1);
  const t0 = performance.now();
  let set: AddressSet;
  try {
    set = await AddressSet.from(texts, invalid);
  } finally {
    clearInterval(ticker);
  }
  const ms = performance.now() - t0;
  assert.equal(set.size('ipv4'), 65_536);
  assert.equal(set.size('ipv6'), 65_536);
  // A 1 ms timer ran meanwhile when the parse took more than a couple of budgets.
  if (ms > 40) assert.ok(turns > 0, `${ms.toFixed(0)} ms of parsing without a turn of the event loop`);
  const v4 = set.forFamily('ipv4')!;
  const b4 = Buffer.alloc(4);
  for (let i = 0; i < 1 << 17; i++) {
    b4.writeUInt32BE((0x0a000000 + i) >>> 0);
    assert.equal(v4.matches(b4, 0), i < 65_536, `10.x: ${i}`);
  }
  for (let i = 0; i < 65_536; i += 7) {
    assert.ok(has(set, `2001:db8:${((i * 7919) & 0xffff).toString(16)}::${i.toString(16)}`));
    assert.ok(!has(set, `2001:db8:${((i * 7919 + 1) & 0xffff).toString(16)}::${i.toString(16)}`));
  }
});

test('CIDRs match every address of their prefix, of their family only, beside exact addresses', async () => {
  const set = await AddressSet.from(['192.0.2.0/24', '198.51.100.128/25', '198.51.100.7', '2001:db8:1::/48', '2001:db8::5', '10.0.0.0/8', '0.0.0.0/0'], invalid);
  const v4 = await AddressSet.from(['192.0.2.0/24', '198.51.100.128/25', '198.51.100.7', '203.0.113.64/27'], invalid);
  for (const yes of ['192.0.2.0', '192.0.2.255', '198.51.100.128', '198.51.100.255', '198.51.100.7', '203.0.113.95']) assert.ok(has(v4, yes), yes);
  for (const no of ['192.0.3.0', '192.0.1.255', '198.51.100.127', '198.51.100.6', '203.0.113.96', '203.0.113.63']) assert.ok(!has(v4, no), no);
  assert.ok(has(set, '8.8.8.8'), '0.0.0.0/0 matches any IPv4 address');
  for (const yes of ['2001:db8:1::', '2001:db8:1:ffff:ffff:ffff:ffff:ffff', '2001:db8::5']) assert.ok(has(set, yes), yes);
  for (const no of ['2001:db8:2::', '2001:db8::6', '2001:db9:1::']) assert.ok(!has(set, no), no);
  const odd = await AddressSet.from(['2001:db8:abcd:ab00::/57'], invalid);
  assert.ok(has(odd, '2001:db8:abcd:ab7f::1'), 'a length that is not a multiple of 8: bit 57 is clear');
  assert.ok(!has(odd, '2001:db8:abcd:ab80::1'), 'bit 57 set: outside');
});

test('a CIDR with host bits set, a length out of range or a malformed one is refused by index', async () => {
  for (const bad of ['192.0.2.1/24', '192.0.2.0/33', '2001:db8::/129', '192.0.2.0/', '192.0.2.0/-1', '192.0.2.0/24/1', '/24', '192.0.2.0/0x18', '2001:db8::1/64']) {
    await assert.rejects(AddressSet.from(['192.0.2.9', bad], invalid), new RegExp(`^Error: invalid 1: `), bad);
  }
});
