/**
 * All-or-nothing batch writes over one or several maps. BPF_MAP_UPDATE_BATCH stops at the
 * first failure and keeps what it wrote, and the kernel has no transactions across maps, so
 * "a rejected request changes nothing" (API.md) is built here: snapshot the keys about to
 * be written, write, and put the snapshot back when any write fails.
 *
 * Shared by CtTables.update and NatTables.update (writeGrouped).
 */
import { CtmapError } from '../errors';
import { BpfMap, UpdateFlag } from './types';

/** Entries per update-batch syscall: bounded so one request never holds the event loop for long. */
export const WRITE_CHUNK = 8192;

/** `count` packed keys and values for `map` (key i at keys[i*keySize], value i at values[i*valueSize]). */
export interface PackedWrite {
  readonly map: BpfMap;
  readonly keys: Buffer;
  readonly values: Buffer;
  readonly count: number;
}

/**
 * Writes every group in order with update batches of at most `chunk` entries (flags ANY:
 * insert or replace). Returns the number of entries written (the sum of the counts).
 *
 * All-or-nothing: just before a group is written, the current value of each of its keys is
 * read (one lookup per key: the kernel has no batch lookup by key). When any write throws,
 * every group touched so far is restored, newest first, so a key written twice ends with its
 * value from before the call: keys that existed get their old value back, keys that did not
 * are deleted. Then the write's error is rethrown (its code kept). Restoring is best
 * effort: a restore that itself fails does not stop the others, and the rethrown error's
 * message then says how many entries could not be restored.
 *
 * Concurrent writers (the datapath) are not locked out: a key the datapath changes between
 * the snapshot and the restore gets the snapshot's value.
 */
export function writeAllOrNothing(groups: readonly PackedWrite[], chunk = WRITE_CHUNK): number {
  const undo: Snapshot[] = [];
  let written = 0;
  try {
    for (const g of groups) {
      if (g.count === 0) continue;
      undo.push(takeSnapshot(g.map, g.keys, g.count));
      const ks = g.map.spec.keySize;
      const vs = g.map.spec.valueSize;
      for (let off = 0; off < g.count; off += chunk) {
        const n = Math.min(chunk, g.count - off);
        g.map.updateBatch(g.keys.subarray(off * ks), g.values.subarray(off * vs), n, UpdateFlag.ANY);
      }
      written += g.count;
    }
  } catch (err) {
    let unrestored = 0;
    for (const s of undo.reverse()) unrestored += restore(s);
    if (unrestored === 0) throw err;
    const e = CtmapError.from(err);
    throw new CtmapError(e.code, `${e.message}; rollback failed for ${unrestored} entr${unrestored === 1 ? 'y' : 'ies'}`, { cause: err, field: e.field });
  }
  return written;
}

/**
 * Writes each record into the map `tableOf` picks for it, all-or-nothing (writeAllOrNothing):
 * first every record is checked and assigned (`tableOf` throws to reject the request, before
 * anything is written), then each table's records are packed by `encode` (key at keys[keyOff],
 * value at values[valueOff], the map's key and value sizes apart) and written, tables in
 * the order their first record came. Returns the number of records written.
 */
export function writeGrouped<R, T extends { readonly map: BpfMap }>(
  records: readonly R[],
  tableOf: (record: R, index: number) => T,
  encode: (table: T, record: R, keys: Buffer, keyOff: number, values: Buffer, valueOff: number) => void,
): number {
  const groups = new Map<T, R[]>();
  records.forEach((r, i) => {
    const table = tableOf(r, i);
    const list = groups.get(table) ?? [];
    list.push(r);
    groups.set(table, list);
  });
  const writes = [...groups].map(([table, rs]): PackedWrite => {
    const { keySize: ks, valueSize: vs } = table.map.spec;
    const keys = Buffer.alloc(rs.length * ks);
    const values = Buffer.alloc(rs.length * vs);
    rs.forEach((r, j) => encode(table, r, keys, j * ks, values, j * vs));
    return { map: table.map, keys, values, count: rs.length };
  });
  return writeAllOrNothing(writes);
}

interface Snapshot {
  map: BpfMap;
  /** Keys that existed, packed, with their values before the write. */
  existedKeys: Buffer;
  existedValues: Buffer;
  existed: number;
  /** Keys that did not exist, packed. */
  absentKeys: Buffer;
  absent: number;
}

function takeSnapshot(map: BpfMap, keys: Buffer, count: number): Snapshot {
  const ks = map.spec.keySize;
  const vs = map.spec.valueSize;
  const existedKeys = Buffer.alloc(count * ks);
  const existedValues = Buffer.alloc(count * vs);
  const absentKeys = Buffer.alloc(count * ks);
  let existed = 0;
  let absent = 0;
  for (let i = 0; i < count; i++) {
    const k = keys.subarray(i * ks, (i + 1) * ks);
    if (map.lookup(k, existedValues.subarray(existed * vs, (existed + 1) * vs))) {
      k.copy(existedKeys, existed * ks);
      existed++;
    } else {
      k.copy(absentKeys, absent * ks);
      absent++;
    }
  }
  return { map, existedKeys, existedValues, existed, absentKeys, absent };
}

/** Puts a snapshot back; returns how many entries could not be restored. */
function restore(s: Snapshot): number {
  const { map } = s;
  const ks = map.spec.keySize;
  const vs = map.spec.valueSize;
  let failed = 0;
  // Batches first (one syscall each); entry by entry only when a batch fails, so that one
  // bad entry does not leave the rest of the batch unrestored.
  if (s.absent > 0) {
    try {
      map.deleteBatch(s.absentKeys, s.absent);
    } catch {
      for (let i = 0; i < s.absent; i++) {
        try {
          map.delete(s.absentKeys.subarray(i * ks, (i + 1) * ks));
        } catch {
          failed++;
        }
      }
    }
  }
  if (s.existed > 0) {
    try {
      map.updateBatch(s.existedKeys, s.existedValues, s.existed, UpdateFlag.ANY);
    } catch {
      for (let i = 0; i < s.existed; i++) {
        try {
          map.update(s.existedKeys.subarray(i * ks, (i + 1) * ks), s.existedValues.subarray(i * vs, (i + 1) * vs));
        } catch {
          failed++;
        }
      }
    }
  }
  return failed;
}
