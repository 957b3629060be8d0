/**
 * The memory backend's HASH (type 1) and LRU_HASH (type 9): a packed table with the kernel
 * htab's semantics and no JS object per entry.
 *
 * Layout (all allocated up front, sized by maxEntries, like a preallocated kernel htab):
 *   keys     Buffer      slot i's key at i*keySize
 *   values   Buffer      slot i's value at i*valueSize
 *   hashes   Int32Array  slot i's full hash (cheap mismatch test, bucket of an evicted slot)
 *   links    Int32Array  slot i's successor in its bucket chain, or in the free list
 *   buckets  Int32Array  head slot of each bucket; a power of two >= maxEntries buckets,
 *                        like the kernel's roundup_pow_of_two(max_entries)
 *   lruPrev/lruNext Int32Array  LRU_HASH only: doubly linked recency list, head = most recent
 * -1 ends every list. Slots never used are handed out from a bump index, freed slots go to
 * the free list, so nothing has to be initialised per slot at creation.
 */
import { randomBytes } from 'node:crypto';
import { BpfSyscallError, Errno } from '../errors';
import { LiveMapInfo, MapType, UpdateFlag } from '../types';
import { BatchStep, MemoryTable, bytesEqual, checkUpdateFlags, copyBytes } from './table';

const NIL = -1;

/**
 * murmur3_x86_32 over buf[off, off+len), seeded. Reads bytes directly (no allocation); a
 * random seed per table plays the role of the kernel's per-map hashrnd, so crafted keys
 * cannot pile into one bucket predictably.
 */
export function hashBytes(buf: Buffer, off: number, len: number, seed: number): number {
  let h = seed | 0;
  const end = off + (len & ~3);
  let i = off;
  for (; i < end; i += 4) {
    let k = buf[i] | (buf[i + 1] << 8) | (buf[i + 2] << 16) | (buf[i + 3] << 24);
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  const rest = len & 3;
  if (rest > 0) {
    let k = buf[i];
    if (rest > 1) k |= buf[i + 1] << 8;
    if (rest > 2) k |= buf[i + 2] << 16;
    k = Math.imul(k, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
  }
  h ^= len;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

function bucketCountFor(maxEntries: number): number {
  let n = 1;
  while (n < maxEntries) n *= 2;
  return n;
}

/**
 * A HASH or LRU_HASH table. Contract (matches the kernel htab, checked by
 * test/contract/bpfmap.contract.ts against the real thing):
 * - update: flags other than ANY/NOEXIST/EXIST -> EINVAL; NOEXIST on a present key -> EEXIST;
 *   EXIST on an absent key -> ENOENT; a new key in a full HASH -> E2BIG; a new key in a full
 *   LRU_HASH evicts the least recently used entry first. Overwriting a present key always
 *   works, full or not.
 * - LRU order: update and lookup make an entry the most recent. (The kernel only sets the
 *   reference bit on lookups from BPF programs, not on bpf() syscall lookups; the memory
 *   backend stands in for map and datapath together, so every lookup counts.) Batch reads
 *   do not touch the order, as in the kernel.
 * - Unlike the kernel's per-CPU free lists, eviction is exact: a full LRU table holds exactly
 *   maxEntries entries and loses exactly the least recently used one.
 */
export class HashTable implements MemoryTable {
  readonly info: LiveMapInfo;
  readonly supportsDeleteBatch = true;
  get valueBufferSize(): number {
    return this.info.valueSize;
  }
  /** Bytes preallocated for this table (keys, values and every index array). */
  readonly byteSize: number;

  readonly #lru: boolean;
  readonly #ks: number;
  readonly #vs: number;
  readonly #max: number;
  readonly #seed: number;
  readonly #keys: Buffer;
  readonly #values: Buffer;
  readonly #hashes: Int32Array;
  readonly #links: Int32Array;
  readonly #buckets: Int32Array;
  readonly #mask: number;
  readonly #lruPrev: Int32Array;
  readonly #lruNext: Int32Array;
  #lruHead = NIL;
  #lruTail = NIL;
  #freeHead = NIL;
  #bump = 0;
  #size = 0;

  /** Allocates everything for `info.maxEntries` entries; the caller has validated info. */
  constructor(info: LiveMapInfo, seed: number = randomBytes(4).readInt32LE(0)) {
    this.info = info;
    this.#lru = info.type === MapType.LRU_HASH;
    this.#ks = info.keySize;
    this.#vs = info.valueSize;
    this.#max = info.maxEntries;
    this.#seed = seed;
    const max = info.maxEntries;
    this.#keys = Buffer.alloc(max * info.keySize);
    this.#values = Buffer.alloc(max * info.valueSize);
    this.#hashes = new Int32Array(max);
    this.#links = new Int32Array(max);
    const nBuckets = bucketCountFor(max);
    this.#buckets = new Int32Array(nBuckets).fill(NIL);
    this.#mask = nBuckets - 1;
    // Plain HASH has no recency order; empty arrays keep the field types monomorphic.
    this.#lruPrev = new Int32Array(this.#lru ? max : 0);
    this.#lruNext = new Int32Array(this.#lru ? max : 0);
    this.byteSize =
      this.#keys.byteLength +
      this.#values.byteLength +
      this.#hashes.byteLength +
      this.#links.byteLength +
      this.#buckets.byteLength +
      this.#lruPrev.byteLength +
      this.#lruNext.byteLength;
  }

  count(): number {
    return this.#size;
  }

  lookup(key: Buffer, koff: number, out: Buffer, ooff: number): boolean {
    const s = this.#find(key, koff, hashBytes(key, koff, this.#ks, this.#seed));
    if (s === NIL) return false;
    copyBytes(this.#values, s * this.#vs, out, ooff, this.#vs);
    if (this.#lru) this.#touch(s);
    return true;
  }

  update(key: Buffer, koff: number, value: Buffer, voff: number, flags: number): void {
    // Same check order as htab_map_update_elem: flags, then presence, then room.
    checkUpdateFlags(flags);
    const h = hashBytes(key, koff, this.#ks, this.#seed);
    const found = this.#find(key, koff, h);
    if (found !== NIL) {
      if (flags === UpdateFlag.NOEXIST) throw new BpfSyscallError('map update', Errno.EEXIST);
      copyBytes(value, voff, this.#values, found * this.#vs, this.#vs);
      if (this.#lru) this.#touch(found);
      return;
    }
    if (flags === UpdateFlag.EXIST) throw new BpfSyscallError('map update', Errno.ENOENT);
    if (this.#size === this.#max) {
      if (!this.#lru) throw new BpfSyscallError('map update', Errno.E2BIG, 'map full');
      this.#evictOldest();
    }
    const s = this.#allocSlot();
    copyBytes(key, koff, this.#keys, s * this.#ks, this.#ks);
    copyBytes(value, voff, this.#values, s * this.#vs, this.#vs);
    this.#hashes[s] = h;
    const b = h & this.#mask;
    this.#links[s] = this.#buckets[b];
    this.#buckets[b] = s;
    if (this.#lru) this.#lruPushFront(s);
    this.#size++;
  }

  delete(key: Buffer, koff: number): boolean {
    const h = hashBytes(key, koff, this.#ks, this.#seed);
    const b = h & this.#mask;
    let prev = NIL;
    for (let s = this.#buckets[b]; s !== NIL; prev = s, s = this.#links[s]) {
      if (this.#hashes[s] !== h || !bytesEqual(this.#keys, s * this.#ks, key, koff, this.#ks)) continue;
      if (prev === NIL) this.#buckets[b] = this.#links[s];
      else this.#links[prev] = this.#links[s];
      this.#release(s);
      return true;
    }
    return false;
  }

  readBatch(step: BatchStep, keys: Buffer, values: Buffer, capacity: number): void {
    const ks = this.#ks;
    const vs = this.#vs;
    const buckets = this.#buckets;
    const links = this.#links;
    const tableKeys = this.#keys;
    const tableValues = this.#values;
    const nBuckets = buckets.length;
    let b = step.pos;
    let n = 0;
    step.need = 0;
    for (; b < nBuckets; b++) {
      const head = buckets[b];
      if (head === NIL) continue;
      let len = 0;
      for (let s = head; s !== NIL; s = links[s]) len++;
      // A batch never splits a bucket (the kernel's batch token is a bucket index).
      if (n + len > capacity) {
        if (n === 0) step.need = len;
        break;
      }
      for (let s = head; s !== NIL; s = links[s]) {
        copyBytes(tableKeys, s * ks, keys, n * ks, ks);
        copyBytes(tableValues, s * vs, values, n * vs, vs);
        n++;
      }
    }
    step.pos = b;
    step.count = n;
    step.done = b >= nBuckets;
  }

  /** @internal For tests: the bucket `key` hashes to, the bucket count, a bucket's chain length. */
  bucketOf(key: Buffer): number {
    return hashBytes(key, 0, this.#ks, this.#seed) & this.#mask;
  }
  /** @internal */
  get bucketCount(): number {
    return this.#buckets.length;
  }
  /** @internal */
  chainLength(bucket: number): number {
    let len = 0;
    for (let s = this.#buckets[bucket]; s !== NIL; s = this.#links[s]) len++;
    return len;
  }

  #find(key: Buffer, koff: number, h: number): number {
    const ks = this.#ks;
    for (let s = this.#buckets[h & this.#mask]; s !== NIL; s = this.#links[s]) {
      if (this.#hashes[s] === h && bytesEqual(this.#keys, s * ks, key, koff, ks)) return s;
    }
    return NIL;
  }

  #allocSlot(): number {
    if (this.#freeHead !== NIL) {
      const s = this.#freeHead;
      this.#freeHead = this.#links[s];
      return s;
    }
    return this.#bump++;
  }

  /** Returns an entry's slot to the free list; the caller has unlinked it from its bucket. */
  #release(s: number): void {
    if (this.#lru) this.#lruUnlink(s);
    this.#links[s] = this.#freeHead;
    this.#freeHead = s;
    this.#size--;
  }

  #evictOldest(): void {
    const s = this.#lruTail;
    const b = this.#hashes[s] & this.#mask;
    if (this.#buckets[b] === s) {
      this.#buckets[b] = this.#links[s];
    } else {
      let p = this.#buckets[b];
      while (this.#links[p] !== s) p = this.#links[p];
      this.#links[p] = this.#links[s];
    }
    this.#release(s);
  }

  #touch(s: number): void {
    if (this.#lruHead === s) return;
    this.#lruUnlink(s);
    this.#lruPushFront(s);
  }

  #lruPushFront(s: number): void {
    this.#lruPrev[s] = NIL;
    this.#lruNext[s] = this.#lruHead;
    if (this.#lruHead !== NIL) this.#lruPrev[this.#lruHead] = s;
    else this.#lruTail = s;
    this.#lruHead = s;
  }

  #lruUnlink(s: number): void {
    const p = this.#lruPrev[s];
    const n = this.#lruNext[s];
    if (p !== NIL) this.#lruNext[p] = n;
    else this.#lruHead = n;
    if (n !== NIL) this.#lruPrev[n] = p;
    else this.#lruTail = p;
  }
}
