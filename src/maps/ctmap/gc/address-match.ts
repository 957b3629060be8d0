/**
 * The match_ips test of a GC pass: is an entry's saddr or daddr one of the listed
 * addresses? One hash lookup per address, on the raw network-order key bytes, with no
 * allocation (issue 12, item 7: a linear scan of the list per entry took 5-8 s for 50,000
 * addresses and held the daemon meanwhile). CIDRs ("192.0.2.0/24") are one table per prefix
 * length present: an address is masked to each length and looked up, so an entry costs one
 * lookup per distinct length (at most 33 or 129), however many prefixes share it. The scan
 * sees only AddressTest, per family. The same sets serve the flow filters of dumps, counts
 * and deletes (DumpFilter src/dst, src/maps/ctmap/tables.ts).
 */
import { randomInt } from 'node:crypto';
import { Family, addressFamily, writeAddress } from '../../addr';
import { EventLoopBudget } from './event-loop-budget';

/** One family's test: true when the address at buf[off .. off+4 (IPv4) or +16 (IPv6)) matches. */
export interface AddressTest {
  matches(buf: Buffer, off: number): boolean;
}

/** What GCFilter.matchIPs holds. */
export interface AddressMatcher {
  /** The test for addresses of `family`; undefined when none of that family can match. */
  forFamily(family: Family): AddressTest | undefined;
}

/** Texts parsed between two checks of the event-loop budget. */
const PARSE_SLICE = 1024;

/** Bits of an address of `family`. */
const ADDRESS_BITS: Readonly<Record<Family, number>> = { ipv4: 32, ipv6: 128 };

/**
 * An address or CIDR as text: its family, network-order bytes with the host bits cleared,
 * and prefix length (32 or 128 for a plain address). Undefined for anything else,
 * including a prefix length out of range or host bits set ("192.0.2.1/24": ambiguous, as
 * Go's net.ParseCIDR callers usually refuse it too).
 */
export function parsePrefix(text: string): { family: Family; bytes: Buffer; bits: number } | undefined {
  if (typeof text !== 'string') return undefined;
  const slash = text.indexOf('/');
  const addr = slash < 0 ? text : text.slice(0, slash);
  const family = addressFamily(addr);
  if (!family) return undefined;
  const max = ADDRESS_BITS[family];
  let bits = max;
  if (slash >= 0) {
    const len = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(len) || Number(len) > max) return undefined;
    bits = Number(len);
  }
  const bytes = Buffer.alloc(max / 8);
  writeAddress(family, addr, bytes, 0);
  const masked = Buffer.from(bytes);
  maskTo(masked, 0, bits, masked, 0);
  if (!masked.equals(bytes)) return undefined;
  return { family, bytes, bits };
}

/** Copies the first `bits` bits of src[soff..] to dst[doff..], the rest of the address zero. */
function maskTo(src: Buffer, soff: number, bits: number, dst: Buffer, doff: number, len = dst.length - doff): void {
  const whole = bits >>> 3;
  for (let i = 0; i < whole; i++) dst[doff + i] = src[soff + i];
  if (whole < len) {
    const rest = bits & 7;
    dst[doff + whole] = rest ? src[soff + whole] & (0xff << (8 - rest)) : 0;
    for (let i = whole + 1; i < len; i++) dst[doff + i] = 0;
  }
}

/** One family's prefixes: one table per prefix length present, longest first. */
class PrefixTables implements AddressTest {
  readonly #byLength = new Map<number, AddressTable>();
  #lengths: number[] = [];
  readonly #scratch: Buffer;

  constructor(readonly family: Family) {
    this.#scratch = Buffer.alloc(ADDRESS_BITS[family] / 8);
  }

  get size(): number {
    let n = 0;
    for (const t of this.#byLength.values()) n += t.size;
    return n;
  }

  add(bytes: Buffer, bits: number): void {
    let t = this.#byLength.get(bits);
    if (!t) {
      t = new AddressTable(ADDRESS_BITS[this.family] / 32);
      this.#byLength.set(bits, t);
      this.#lengths = [...this.#byLength.keys()].sort((a, b) => b - a);
    }
    t.add(bytes, 0);
  }

  matches(buf: Buffer, off: number): boolean {
    for (const bits of this.#lengths) {
      const t = this.#byLength.get(bits)!;
      if (bits === ADDRESS_BITS[this.family]) {
        if (t.matches(buf, off)) return true;
        continue;
      }
      maskTo(buf, off, bits, this.#scratch, 0);
      if (t.matches(this.#scratch, 0)) return true;
    }
    return false;
  }
}

/**
 * A set of addresses and CIDRs: the matcher of a match_ips list and of the flow filters.
 * Built with `from`, which validates every text and gives the event loop a turn while it
 * works (65,536 IPv6 texts take ~35 ms to parse here once warm, ~110 ms cold; IPv4 a third
 * of that).
 */
export class AddressSet implements AddressMatcher {
  readonly #tables: Record<Family, PrefixTables> = { ipv4: new PrefixTables('ipv4'), ipv6: new PrefixTables('ipv6') };

  private constructor() {}

  /**
   * The set of `texts` (IP addresses or CIDRs of either family; duplicates are fine).
   * Rejects with invalid(i, texts[i]) for the first text that is neither.
   */
  static async from(texts: readonly string[], invalid: (index: number, text: string) => Error): Promise<AddressSet> {
    const set = new AddressSet();
    const budget = new EventLoopBudget();
    for (let i = 0; i < texts.length; i++) {
      if (i % PARSE_SLICE === 0 && i > 0 && budget.spent()) await budget.giveTurn();
      const prefix = parsePrefix(texts[i]);
      if (!prefix) throw invalid(i, texts[i]);
      set.#tables[prefix.family].add(prefix.bytes, prefix.bits);
    }
    return set;
  }

  /** Distinct addresses and prefixes of `family`. */
  size(family: Family): number {
    return this.#tables[family].size;
  }

  forFamily(family: Family): AddressTest | undefined {
    const t = this.#tables[family];
    return t.size > 0 ? t : undefined;
  }
}

/**
 * Open addressing with linear probing over addresses as 1 (IPv4) or 4 (IPv6) big-endian
 * 32-bit words, at most half full. The hash is MurmurHash3 (x86_32) with a random seed per
 * table, so that a caller cannot choose addresses that all land in one probe run.
 */
class AddressTable implements AddressTest {
  size = 0;
  #mask = 15;
  #words: Int32Array;
  #used: Uint8Array;
  readonly #seed = randomInt(0x100000000) | 0;
  /** The address being looked up or added, as words. */
  readonly #probe: Int32Array;

  constructor(readonly wordsPerAddress: number) {
    this.#words = new Int32Array((this.#mask + 1) * wordsPerAddress);
    this.#used = new Uint8Array(this.#mask + 1);
    this.#probe = new Int32Array(wordsPerAddress);
  }

  matches(buf: Buffer, off: number): boolean {
    return this.#find(this.#load(buf, off)) >= 0;
  }

  add(buf: Buffer, off: number): void {
    const slot = this.#find(this.#load(buf, off));
    if (slot >= 0) return;
    this.#words.set(this.#probe, ~slot * this.wordsPerAddress);
    this.#used[~slot] = 1;
    if (++this.size * 2 > this.#mask + 1) this.#grow();
  }

  /** Reads the address at buf[off..] into #probe; returns its hash. */
  #load(buf: Buffer, off: number): number {
    const p = this.#probe;
    let h = this.#seed;
    for (let w = 0; w < p.length; w++, off += 4) {
      const k = (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3];
      p[w] = k;
      let m = Math.imul(k, 0xcc9e2d51);
      m = Math.imul((m << 15) | (m >>> 17), 0x1b873593);
      h ^= m;
      h = (Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64) | 0;
    }
    h ^= p.length * 4;
    h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
    h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
    return h ^ (h >>> 16);
  }

  /** The slot holding #probe, or ~(the free slot where it would go). */
  #find(hash: number): number {
    const p = this.#probe;
    const n = p.length;
    const words = this.#words;
    for (let slot = hash & this.#mask; ; slot = (slot + 1) & this.#mask) {
      if (this.#used[slot] === 0) return ~slot;
      const base = slot * n;
      let w = 0;
      while (w < n && words[base + w] === p[w]) w++;
      if (w === n) return slot;
    }
  }

  #grow(): void {
    const n = this.wordsPerAddress;
    const words = this.#words;
    const used = this.#used;
    this.#mask = this.#mask * 2 + 1;
    this.#words = new Int32Array((this.#mask + 1) * n);
    this.#used = new Uint8Array(this.#mask + 1);
    const bytes = Buffer.alloc(n * 4);
    for (let slot = 0; slot < used.length; slot++) {
      if (used[slot] === 0) continue;
      for (let w = 0; w < n; w++) bytes.writeInt32BE(words[slot * n + w], w * 4);
      const free = ~this.#find(this.#load(bytes, 0));
      this.#words.set(this.#probe, free * n);
      this.#used[free] = 1;
    }
  }
}
