/**
 * Copying a live map into a new one (issue 6): the bulk copy with batch operations, the
 * selection of what a smaller map keeps, and the delta copy of what changed in the old map
 * while the copy ran. The pin state machine that drives these is in lifecycle.ts.
 *
 * Only the calling process writes the new map until its pin is swapped in, so the bulk copy
 * knows exactly what it wrote. What it read is remembered as 64-bit fingerprints of
 * (key, value) — 8 bytes per entry, plus an index of about as much built only when the
 * old map did change; not a second copy of the map — so the delta pass can tell, for each
 * entry of the old map, whether it changed since it was copied, and, for the same key in
 * the new map, whether the value there is still the copied one (then the old map's newer
 * value wins) or was written since the swap (then it is newer still and is kept). A write
 * into a new map that is full (a shrink) follows LRU semantics like any write into a live
 * full map: the kernel may evict to make room.
 */
import * as zlib from 'node:zlib';
import { BpfSyscallError, Errno } from './errors';
import { BatchCursor, BpfMap, FillShare, MapBackend, UpdateFlag } from './types';

/**
 * How recent an entry is, from its value at values[off..]: larger = more recent. A map that
 * shrinks below its entry count keeps the entries with the largest rank (CT: lifetime).
 */
export type RankFn = (values: Buffer, off: number) => number;

/** Entries per batch syscall of the copy and delta passes. */
export const MIGRATE_BATCH = 4096;

// ---- fingerprints -------------------------------------------------------------------------

/**
 * 64-bit fingerprint of one (key, value). The key is read as little-endian u16 words and
 * the value as u32 words (a trailing partial word zero-extended), word j of each going to
 * lane j % 4; each lane is a chain of (state ^ word) * odd, rotated, which is injective in
 * the state, so an entry that differs in one word always differs in its lane. Four
 * independent lanes keep the multiply chains short (the copy fingerprints every entry of
 * the map); a final mix folds lanes 0-1 into fp[0] and 2-3 into fp[1]. The typed-array
 * path over a whole batch and the byte path for one entry give the same result.
 */
const fp = new Int32Array(2);

const M0 = 0x9e3779b1;
const M1 = 0x85ebca77;
const M2 = 0xc2b2ae3d;
const M3 = 0x27d4eb2f;

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

function finish(h0: number, h1: number, h2: number, h3: number): void {
  const a = fmix(h0 ^ ((h1 << 16) | (h1 >>> 16)) ^ Math.imul(h1, M2));
  const b = fmix(h2 ^ ((h3 << 16) | (h3 >>> 16)) ^ Math.imul(h3, M0) ^ a);
  // (0, 0) marks a free slot in FingerprintLog's index.
  fp[0] = a;
  fp[1] = a === 0 && b === 0 ? 1 : b;
}

/** One lane step: injective in h for any w. */
function step(h: number, w: number, m: number): number {
  h = Math.imul(h ^ w, m);
  return (h << 13) | (h >>> 19);
}

/** The byte path: any buffer, any offset. */
function fingerprintBytes(keys: Buffer, kOff: number, ks: number, values: Buffer, vOff: number, vs: number): void {
  const h = [0x2545f491 ^ ks, 0x6a09e667 ^ vs, 0x3c6ef372, 0x510e527f];
  const m = [M0, M1, M2, M3];
  for (let i = 0, j = 0; i < ks; i += 2, j++) {
    const w = keys[kOff + i] | (i + 1 < ks ? keys[kOff + i + 1] << 8 : 0);
    h[j & 3] = step(h[j & 3], w, m[j & 3]);
  }
  for (let i = 0, j = 0; i < vs; i += 4, j++) {
    let w = values[vOff + i];
    if (i + 1 < vs) w |= values[vOff + i + 1] << 8;
    if (i + 2 < vs) w |= values[vOff + i + 2] << 16;
    if (i + 3 < vs) w |= values[vOff + i + 3] << 24;
    h[j & 3] = step(h[j & 3], w, m[j & 3]);
  }
  finish(h[0], h[1], h[2], h[3]);
}

/** The word path over views of a whole batch (aligned buffers, even key and 4n value sizes). */
function fingerprintWords(k16: Uint16Array, kw: number, kAt: number, v32: Int32Array, vw: number, vAt: number, ks: number, vs: number): void {
  let h0 = 0x2545f491 ^ ks;
  let h1 = 0x6a09e667 ^ vs;
  let h2 = 0x3c6ef372;
  let h3 = 0x510e527f;
  let j = 0;
  for (; j + 4 <= kw; j += 4) {
    h0 = step(h0, k16[kAt + j], M0);
    h1 = step(h1, k16[kAt + j + 1], M1);
    h2 = step(h2, k16[kAt + j + 2], M2);
    h3 = step(h3, k16[kAt + j + 3], M3);
  }
  if (j < kw) h0 = step(h0, k16[kAt + j], M0);
  if (j + 1 < kw) h1 = step(h1, k16[kAt + j + 1], M1);
  if (j + 2 < kw) h2 = step(h2, k16[kAt + j + 2], M2);
  for (j = 0; j + 4 <= vw; j += 4) {
    h0 = step(h0, v32[vAt + j], M0);
    h1 = step(h1, v32[vAt + j + 1], M1);
    h2 = step(h2, v32[vAt + j + 2], M2);
    h3 = step(h3, v32[vAt + j + 3], M3);
  }
  if (j < vw) h0 = step(h0, v32[vAt + j], M0);
  if (j + 1 < vw) h1 = step(h1, v32[vAt + j + 1], M1);
  if (j + 2 < vw) h2 = step(h2, v32[vAt + j + 2], M2);
  finish(h0, h1, h2, h3);
}

/** Fingerprints every entry of a packed batch into out[at + 2i], out[at + 2i + 1]. */
function fingerprintBatch(keys: Buffer, values: Buffer, count: number, ks: number, vs: number, out: Int32Array, at: number): void {
  // Little-endian hosts only (x86-64, arm64): the views read the words the byte path composes.
  if (ks % 2 === 0 && vs % 4 === 0 && keys.byteOffset % 2 === 0 && values.byteOffset % 4 === 0) {
    const k16 = new Uint16Array(keys.buffer, keys.byteOffset, (count * ks) / 2);
    const v32 = new Int32Array(values.buffer, values.byteOffset, (count * vs) / 4);
    const kw = ks / 2;
    const vw = vs / 4;
    for (let i = 0; i < count; i++) {
      fingerprintWords(k16, kw, i * kw, v32, vw, i * vw, ks, vs);
      out[at + 2 * i] = fp[0];
      out[at + 2 * i + 1] = fp[1];
    }
    return;
  }
  for (let i = 0; i < count; i++) {
    fingerprintBytes(keys, i * ks, ks, values, i * vs, vs);
    out[at + 2 * i] = fp[0];
    out[at + 2 * i + 1] = fp[1];
  }
}

/** zlib.crc32 (Node >= 20.15): a native checksum of a whole batch; undefined before. */
const crc32 = (zlib as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;

function batchCrc(keys: Buffer, values: Buffer, count: number, ks: number, vs: number): number {
  return crc32!(values.subarray(0, count * vs), crc32!(keys.subarray(0, count * ks)));
}

/**
 * The fingerprints of the entries the bulk copy read, in the order it read them (8 bytes
 * per entry). The delta pass reads the same map again in the same bucket order, so an
 * unchanged map matches entry by entry with sequential reads; the first mismatch builds an
 * index (fingerprint -> position) that answers membership and lets the sequential match
 * pick up again after an entry that changed, appeared or went away. Each recorded batch
 * also keeps a CRC-32 of its bytes: a batch read again identical, at the same position,
 * is matched whole without fingerprinting its entries (the common case: most of a map is
 * not written while it is copied).
 */
export class FingerprintLog {
  #log = new Int32Array(2048);
  #n = 0;
  /** Recorded batches by their first position: [count, crc]. */
  readonly #batches = new Map<number, [number, number]>();
  /** Open addressing: position + 1 of a fingerprint in #log, 0 = free. */
  #index: Int32Array | undefined;
  #mask = 0;
  /** Where the sequential match expects the next entry. */
  #next = 0;
  /** matchBatch's fingerprints of the batch at hand. */
  #scratch = new Int32Array(0);

  /** Entries recorded. */
  get size(): number {
    return this.#n;
  }

  /** Records every entry of a packed batch. */
  appendBatch(keys: Buffer, values: Buffer, count: number, ks: number, vs: number): void {
    if ((this.#n + count) * 2 > this.#log.length) {
      const bigger = new Int32Array(Math.max(this.#log.length * 2, (this.#n + count) * 2));
      bigger.set(this.#log.subarray(0, this.#n * 2));
      this.#log = bigger;
    }
    this.#index = undefined;
    if (crc32 && count > 0) this.#batches.set(this.#n, [count, batchCrc(keys, values, count, ks, vs)]);
    fingerprintBatch(keys, values, count, ks, vs, this.#log, this.#n * 2);
    this.#n += count;
  }

  /**
   * For every entry of a packed batch read in a second pass over the same map, whether it
   * was recorded exactly so (same key, same value): out[i] = 1 if so, else 0.
   */
  matchBatch(keys: Buffer, values: Buffer, count: number, ks: number, vs: number, out: Uint8Array): void {
    const same = this.#batches.get(this.#next);
    if (same && same[0] === count && batchCrc(keys, values, count, ks, vs) === same[1]) {
      out.fill(1, 0, count);
      this.#next += count;
      return;
    }
    const log = this.#log;
    if (this.#scratch.length < count * 2) this.#scratch = new Int32Array(count * 2);
    const fps = this.#scratch;
    fingerprintBatch(keys, values, count, ks, vs, fps, 0);
    for (let i = 0; i < count; i++) {
      const hi = fps[2 * i];
      const lo = fps[2 * i + 1];
      const j = this.#next;
      if (j < this.#n && log[j * 2] === hi && log[j * 2 + 1] === lo) {
        this.#next = j + 1;
        out[i] = 1;
        continue;
      }
      const found = this.#find(hi, lo);
      if (found >= 0) this.#next = found + 1;
      out[i] = found >= 0 ? 1 : 0;
    }
  }

  /** Whether this one (key, value) was recorded. */
  has(key: Buffer, value: Buffer): boolean {
    fingerprintBytes(key, 0, key.length, value, 0, value.length);
    return this.#find(fp[0], fp[1]) >= 0;
  }

  /** Position of a fingerprint in the log, or -1. Builds the index on first use. */
  #find(hi: number, lo: number): number {
    if (!this.#index) this.#buildIndex();
    const index = this.#index!;
    const log = this.#log;
    for (let s = hi & this.#mask; ; s = (s + 1) & this.#mask) {
      const p = index[s];
      if (p === 0) return -1;
      if (log[(p - 1) * 2] === hi && log[(p - 1) * 2 + 1] === lo) return p - 1;
    }
  }

  #buildIndex(): void {
    let cap = 1024;
    while (cap < this.#n * 2) cap *= 2;
    const index = new Int32Array(cap);
    const mask = cap - 1;
    const log = this.#log;
    for (let j = 0; j < this.#n; j++) {
      let s = log[j * 2] & mask;
      while (index[s] !== 0) s = (s + 1) & mask;
      index[s] = j + 1;
    }
    this.#index = index;
    this.#mask = mask;
  }
}

// ---- writing within the fill plan ---------------------------------------------------------

/**
 * Writes packed entries into a fresh map share by share of its fill plan, each write with
 * the JS thread placed on its share's CPU (backend.onCpu), so that the kernel never evicts
 * what was just written (src/maps/kernel/placement.ts). The thread is placed for each
 * write only, not for the whole copy: libuv's pool threads, which read the next batch
 * meanwhile, inherit the mask of the thread that starts them and must stay free to run on
 * another CPU.
 */
class ShareWriter {
  #share = 0;
  #left: number;

  constructor(
    private readonly dst: BpfMap,
    private readonly backend: MapBackend,
    private readonly plan: readonly FillShare[],
  ) {
    this.#left = plan[0]?.limit ?? 0;
  }

  /** Writes up to `count` entries; returns how many fit (the rest are the caller's to count). */
  write(keys: Buffer, values: Buffer, count: number): number {
    const ks = this.dst.spec.keySize;
    const vs = this.dst.spec.valueSize;
    let done = 0;
    while (done < count && this.#share < this.plan.length) {
      if (this.#left === 0) {
        if (++this.#share >= this.plan.length) break;
        this.#left = this.plan[this.#share].limit;
        continue;
      }
      const n = Math.min(this.#left, count - done);
      onCpu(this.backend, this.plan[this.#share].cpu, () => this.dst.updateBatch(keys.subarray(done * ks), values.subarray(done * vs), n));
      done += n;
      this.#left -= n;
    }
    return done;
  }
}

/** Runs fn with the JS thread placed on `cpu` (backend.onCpu), restoring its CPUs after. */
function onCpu<T>(backend: MapBackend, cpu: number | undefined, fn: () => T): T {
  const restore = backend.onCpu(cpu);
  try {
    return fn();
  } finally {
    restore();
  }
}

// ---- bulk copy ----------------------------------------------------------------------------

export interface CopyStats {
  /** Entries read from the old map. */
  readonly seen: number;
  /** Entries written into the new map. */
  readonly copied: number;
  /** Entries not copied: the new map is smaller than what the old one held (lowest rank first). */
  readonly dropped: number;
}

export interface BulkCopyOptions {
  readonly src: BpfMap;
  /** Empty, and written by nobody else until the copy is done. */
  readonly dst: BpfMap;
  readonly backend: MapBackend;
  /** backend.fillPlan(dst.spec): how much fits without evictions, and from which CPU. */
  readonly plan: readonly FillShare[];
  readonly rank: RankFn;
  /** Receives the fingerprint of every entry read, copied or not. */
  readonly seen: FingerprintLog;
  /** Called after every batch written (pacing and test hooks). */
  readonly onBatch?: () => void | Promise<void>;
}

async function forEachBatch(map: BpfMap, fn: (keys: Buffer, values: Buffer, count: number) => void | Promise<void>): Promise<void> {
  const cursor: BatchCursor = map.cursor(MIGRATE_BATCH);
  try {
    // nextAsync reads the following batch on a libuv pool thread while this one is written
    // and fingerprinted here: with a CPU to spare the copy takes ~0.6x the time of reading
    // and writing in turn (measured: 1 Mi entries, 475 vs 809 ms); on busy cores ~1.08x.
    for (let b = await cursor.nextAsync(); b; b = await cursor.nextAsync()) await fn(b.keys, b.values, b.count);
  } finally {
    cursor.close();
  }
}

/**
 * The entries a map of `limit` keeps out of `ranks`: all above the threshold, and as many
 * at the threshold as there is room for (first come). null when everything fits.
 */
function selection(ranks: Float64Array, n: number, limit: number): { threshold: number; ties: number } | null {
  if (n <= limit) return null;
  if (limit === 0) return { threshold: Infinity, ties: 0 };
  const sorted = ranks.slice(0, n).sort();
  const threshold = sorted[n - limit];
  let above = 0;
  for (let i = n - limit; i < n; i++) if (sorted[i] > threshold) above++;
  return { threshold, ties: limit - above };
}

/**
 * Copies every entry of `src` into `dst` with batch lookups and batch updates, within the
 * fill plan. When the old map may hold more than the plan has room for, a first pass
 * collects the ranks, and the copy keeps the highest-ranked entries; `dropped` counts the
 * rest exactly. Throws what the backend throws (nothing is rolled back here).
 */
export async function bulkCopy(o: BulkCopyOptions): Promise<CopyStats> {
  const { src, dst } = o;
  const ks = src.spec.keySize;
  const vs = src.spec.valueSize;
  const room = o.plan.reduce((n, s) => n + s.limit, 0);

  let pick: { threshold: number; ties: number } | null = null;
  if (src.info().maxEntries > room) {
    let ranks = new Float64Array(Math.min(src.info().maxEntries, 1 << 16));
    let n = 0;
    await forEachBatch(src, (_keys, values, count) => {
      if (n + count > ranks.length) {
        const bigger = new Float64Array(Math.max(ranks.length * 2, n + count));
        bigger.set(ranks);
        ranks = bigger;
      }
      for (let i = 0; i < count; i++) ranks[n++] = o.rank(values, i * vs);
    });
    pick = selection(ranks, n, room);
  }

  const writer = new ShareWriter(dst, o.backend, o.plan);
  let seen = 0;
  let copied = 0;
  let stageKeys = Buffer.alloc(0);
  let stageValues = Buffer.alloc(0);
  await forEachBatch(src, async (keys, values, count) => {
    o.seen.appendBatch(keys, values, count, ks, vs);
    seen += count;
    if (!pick) {
      copied += writer.write(keys, values, count);
    } else {
      if (stageKeys.length < count * ks) {
        stageKeys = Buffer.alloc(count * ks);
        stageValues = Buffer.alloc(count * vs);
      }
      let n = 0;
      for (let i = 0; i < count; i++) {
        const r = o.rank(values, i * vs);
        if (r > pick.threshold || (r === pick.threshold && pick.ties > 0)) {
          if (r === pick.threshold) pick.ties--;
          keys.copy(stageKeys, n * ks, i * ks, (i + 1) * ks);
          values.copy(stageValues, n * vs, i * vs, (i + 1) * vs);
          n++;
        }
      }
      copied += writer.write(stageKeys, stageValues, n);
    }
    await o.onBatch?.();
  });
  return { seen, copied, dropped: seen - copied };
}

// ---- delta copy ---------------------------------------------------------------------------

export interface DeltaStats {
  /** Entries read from the old map. */
  readonly scanned: number;
  /** Unchanged since the bulk copy (or, after a crash, present in the new map: kept as is). */
  readonly unchanged: number;
  /** Written into the new map: changed or created in the old map since the copy. */
  readonly written: number;
  /** Changed in the old map, but the new map holds a value written after the swap: kept. */
  readonly keptNewer: number;
  /** After a crash only: absent from the new map and no room left for them. */
  readonly dropped: number;
}

export interface DeltaOptions {
  readonly old: BpfMap;
  readonly fresh: BpfMap;
  readonly backend: MapBackend;
  readonly plan: readonly FillShare[];
  readonly rank: RankFn;
  /**
   * The bulk copy's fingerprints. Undefined when resuming after a crash: then every entry
   * of the old map missing from the new one is copied (highest rank first, as far as the
   * plan has room), and entries present in both are left as the new map has them.
   */
  readonly seen?: FingerprintLog;
  readonly onBatch?: () => void | Promise<void>;
}

/**
 * Copies into `fresh` what changed in `old` since the bulk copy (see the module comment for
 * how a conflict is decided). Entries deleted from the old map meanwhile are not deleted
 * from the new one: they expire or are collected by GC there. Single-element syscalls: the
 * delta of a live map is small next to the map.
 */
export async function deltaCopy(o: DeltaOptions): Promise<DeltaStats> {
  return o.seen ? deltaWithFingerprints(o, o.seen) : deltaAfterCrash(o);
}

async function deltaWithFingerprints(o: DeltaOptions, seen: FingerprintLog): Promise<DeltaStats> {
  const ks = o.old.spec.keySize;
  const vs = o.old.spec.valueSize;
  const cur = Buffer.alloc(vs);
  const match = new Uint8Array(MIGRATE_BATCH);
  let scanned = 0;
  let unchanged = 0;
  let written = 0;
  let keptNewer = 0;
  // The new map's free slots are on the plan's CPU (common LRU): write from there too.
  const cpu = o.plan[0]?.cpu;
  await forEachBatch(o.old, async (keys, values, count) => {
    scanned += count;
    const same = count <= match.length ? match : new Uint8Array(count);
    seen.matchBatch(keys, values, count, ks, vs, same);
    for (let i = 0; i < count; i++) {
      if (same[i]) {
        unchanged++;
        continue;
      }
      const key = keys.subarray(i * ks, (i + 1) * ks);
      const value = values.subarray(i * vs, (i + 1) * vs);
      if (!o.fresh.lookup(key, cur)) {
        // Created in the old map after it was copied (or dropped by a shrink and touched
        // since): NOEXIST, so that a datapath insert after the swap wins.
        if (onCpu(o.backend, cpu, () => tryUpdate(o.fresh, key, value, UpdateFlag.NOEXIST))) written++;
        else keptNewer++;
      } else if (seen.has(key, cur)) {
        // The new map still holds what was copied: the old map's change is newer.
        if (onCpu(o.backend, cpu, () => tryUpdate(o.fresh, key, value, UpdateFlag.EXIST))) written++;
        else keptNewer++;
      } else {
        keptNewer++;
      }
    }
    await o.onBatch?.();
  });
  return { scanned, unchanged, written, keptNewer, dropped: 0 };
}

/** Update that reports a lost race (EEXIST / ENOENT under NOEXIST / EXIST) as false. */
function tryUpdate(map: BpfMap, key: Buffer, value: Buffer, flags: typeof UpdateFlag.NOEXIST | typeof UpdateFlag.EXIST): boolean {
  try {
    map.update(key, value, flags);
    return true;
  } catch (err) {
    if (err instanceof BpfSyscallError && (err.errno === Errno.EEXIST || err.errno === Errno.ENOENT)) return false;
    throw err;
  }
}

async function deltaAfterCrash(o: DeltaOptions): Promise<DeltaStats> {
  const ks = o.old.spec.keySize;
  const vs = o.old.spec.valueSize;
  const cur = Buffer.alloc(vs);
  let scanned = 0;
  let present = 0;
  // The missing entries, packed, with their ranks: copied highest rank first.
  let mk = Buffer.alloc(1024 * ks);
  let mv = Buffer.alloc(1024 * vs);
  let ranks = new Float64Array(1024);
  let missing = 0;
  await forEachBatch(o.old, async (keys, values, count) => {
    scanned += count;
    for (let i = 0; i < count; i++) {
      if (o.fresh.lookup(keys.subarray(i * ks, (i + 1) * ks), cur)) {
        present++;
        continue;
      }
      if (missing === ranks.length) {
        const n = ranks.length * 2;
        mk = Buffer.concat([mk, Buffer.alloc(mk.length)], n * ks);
        mv = Buffer.concat([mv, Buffer.alloc(mv.length)], n * vs);
        const r = new Float64Array(n);
        r.set(ranks);
        ranks = r;
      }
      keys.copy(mk, missing * ks, i * ks, (i + 1) * ks);
      values.copy(mv, missing * vs, i * vs, (i + 1) * vs);
      ranks[missing] = o.rank(values, i * vs);
      missing++;
    }
    await o.onBatch?.();
  });
  if (missing === 0) return { scanned, unchanged: present, written: 0, keptNewer: 0, dropped: 0 };

  const order = Array.from({ length: missing }, (_, i) => i).sort((a, b) => ranks[b] - ranks[a]);
  const before = o.fresh.count();
  const planRoom = o.plan.reduce((n, s) => n + s.limit, 0);
  const room = Math.max(0, Math.min(missing, planRoom - before));
  const keys = Buffer.alloc(room * ks);
  const values = Buffer.alloc(room * vs);
  for (let j = 0; j < room; j++) {
    mk.copy(keys, j * ks, order[j] * ks, (order[j] + 1) * ks);
    mv.copy(values, j * vs, order[j] * vs, (order[j] + 1) * vs);
  }
  // The new map is no longer fresh: its CPU shares are partly used. Write from the plan's
  // first CPU (where a common LRU's leftover free slots are) and count what stayed.
  onCpu(o.backend, o.plan[0]?.cpu, () => {
    for (let j = 0; j < room; j += MIGRATE_BATCH) {
      const n = Math.min(MIGRATE_BATCH, room - j);
      o.fresh.updateBatch(keys.subarray(j * ks), values.subarray(j * vs), n);
    }
  });
  const after = o.fresh.count();
  const written = Math.max(0, after - before);
  return { scanned, unchanged: present, written, keptNewer: 0, dropped: missing - written };
}

/** Whether `count` entries in a map of this plan are close enough to its room that the kernel may have evicted. */
export function nearCapacity(count: number, plan: readonly FillShare[]): boolean {
  const room = plan.reduce((n, s) => n + s.limit, 0);
  return count > 0 && count >= room * 0.9;
}
