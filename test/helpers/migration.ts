/**
 * Deterministic CT4 entries for the map-lifecycle tests (issue 6): entry i has a key and a
 * value computed from i alone, so a test can write n entries straight into a map (as the
 * datapath would) and later check, without keeping a copy, that a map holds exactly
 * entries 0..n-1 byte for byte.
 */
import type { BpfMap } from '../../src/maps/types';

export const KEY4 = 14;
export const VALUE = 56;
/** Lifetimes far beyond the CT clock (monotonic seconds): no GC pass removes these entries. */
export const LIFETIME_BASE = 0x4000_0000;
/** Odd multiplier: i -> (i * LIFETIME_MUL) mod 2^24 is a bijection on 24 bits. */
const LIFETIME_MUL = 0x9e3779;

/**
 * Entry i's key: client 192.0.2.<i & 0xff> port <i >> 16>, server 198.51.100.<(i >> 8) & 0xff>
 * port 80, TCP, flags 0 — distinct for every i < 2^32. Written at keys[off..].
 */
export function keyOf(i: number, buf: Buffer = Buffer.alloc(KEY4), off = 0): Buffer {
  buf[off] = 192;
  buf[off + 1] = 0;
  buf[off + 2] = 2;
  buf[off + 3] = i & 0xff;
  buf[off + 4] = 198;
  buf[off + 5] = 51;
  buf[off + 6] = 100;
  buf[off + 7] = (i >>> 8) & 0xff;
  buf.writeUInt16BE(80, off + 8);
  buf.writeUInt16BE((i >>> 16) & 0xffff, off + 10);
  buf[off + 12] = 6;
  buf[off + 13] = 0;
  return buf;
}

/** The i of a key written by keyOf, or -1 when it is not one. */
export function indexOf(keys: Buffer, off = 0): number {
  if (keys[off] !== 192 || keys[off + 4] !== 198 || keys[off + 12] !== 6) return -1;
  return (keys[off + 3] | (keys[off + 7] << 8) | (keys.readUInt16BE(off + 10) << 16)) >>> 0;
}

/** Entry i's lifetime: distinct for i < 2^24, in a scrambled order (so the latest are not the last written). */
export function lifetimeOf(i: number): number {
  return LIFETIME_BASE + (Math.imul(i, LIFETIME_MUL) & 0xff_ffff);
}

/** Entry i's value (struct ct_entry): counters and lifetime from i, `salt` for rewrites. */
export function valueOf(i: number, salt = 0, buf: Buffer = Buffer.alloc(VALUE), off = 0): Buffer {
  buf.fill(0, off, off + VALUE);
  buf.writeUInt32LE(i, off + 4); // union0: marks the entry
  buf.writeBigUInt64LE(BigInt(i) * 3n + BigInt(salt) + 1n, off + 16); // packets
  buf.writeBigUInt64LE(BigInt(i) * 1500n + BigInt(salt), off + 24); // bytes
  buf.writeUInt32LE(lifetimeOf(i), off + 32);
  buf.writeUInt16LE(0x10, off + 36); // SeenNonSyn
  buf[off + 42] = 0x12;
  buf[off + 43] = 0x10;
  buf.writeUInt32LE(salt, off + 48); // last_tx_report: distinguishes rewrites
  return buf;
}

/** Writes entries `from`..`from+n-1` with UPDATE_BATCH (4096 per call). */
export function fillEntries(map: BpfMap, n: number, from = 0, salt = 0): void {
  const B = 4096;
  const keys = Buffer.alloc(B * KEY4);
  const values = Buffer.alloc(B * VALUE);
  for (let done = 0; done < n; ) {
    const c = Math.min(B, n - done);
    for (let j = 0; j < c; j++) {
      keyOf(from + done + j, keys, j * KEY4);
      valueOf(from + done + j, salt, values, j * VALUE);
    }
    map.updateBatch(keys, values, c);
    done += c;
  }
}

export interface MapCheck {
  /** Entries in the map. */
  count: number;
  /** Indexes found, ascending (only when asked for). */
  indexes?: number[];
  /** Entries whose key is not one of ours, is out of range, or appears twice. */
  foreign: number;
  /** Our entries whose value differs from valueOf(i, salt(i)). */
  wrongValue: number;
}

/**
 * Reads the whole map and checks every entry against keyOf/valueOf: `salt(i)` is the salt
 * entry i was last written with (default 0); `n` bounds the valid indexes.
 */
export function checkEntries(map: BpfMap, n: number, opts: { salt?: (i: number) => number; indexes?: boolean } = {}): MapCheck {
  const seen = new Uint8Array(n);
  const want = Buffer.alloc(VALUE);
  const out: MapCheck = { count: 0, foreign: 0, wrongValue: 0 };
  const cursor = map.cursor(8192);
  try {
    for (let b = cursor.next(); b; b = cursor.next()) {
      for (let j = 0; j < b.count; j++) {
        out.count++;
        const i = indexOf(b.keys, j * KEY4);
        if (i < 0 || i >= n || seen[i]) {
          out.foreign++;
          continue;
        }
        seen[i] = 1;
        valueOf(i, opts.salt?.(i) ?? 0, want);
        if (want.compare(b.values, j * VALUE, (j + 1) * VALUE) !== 0) out.wrongValue++;
      }
    }
  } finally {
    cursor.close();
  }
  if (opts.indexes) {
    out.indexes = [];
    for (let i = 0; i < n; i++) if (seen[i]) out.indexes.push(i);
  }
  return out;
}

/** The `k` indexes in 0..n-1 with the latest lifetimes, ascending. */
export function latestLifetimes(n: number, k: number): number[] {
  return Array.from({ length: n }, (_, i) => i)
    .sort((a, b) => lifetimeOf(b) - lifetimeOf(a))
    .slice(0, k)
    .sort((a, b) => a - b);
}
