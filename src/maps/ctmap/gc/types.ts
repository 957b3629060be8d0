/**
 * Garbage-collection vocabulary (Cilium's GCFilter / GCEvent / GCRunner, facts §6), shared
 * by the engine, the NAT coupling, the scheduler and the gRPC service.
 */
import type { BpfMap } from '../../types';
import type { Family } from '../../addr';
import type { MapRef } from '../spec';
import type { AddressMatcher } from './address-match';
import type { CtEventReason } from '../events/types';

/**
 * Why a GC pass deleted an entry, as the lifecycle event stream reports it (issue 13):
 * gc-expired (its lifetime had passed "now"), gc-filter (match_ips, or a time the caller
 * chose), or what the pass was run for: flush (CTMaps.Flush), cluster-leave.
 */
export type GCDestroyReason = Extract<CtEventReason, 'gc-expired' | 'gc-filter' | 'flush' | 'delete' | 'cluster-leave'>;

/** Which entries a pass removes. Neither criterion set: the pass only counts (and emits). */
export interface GCFilter {
  /** Remove entries whose lifetime < time. */
  removeExpired: boolean;
  /** CT clock seconds; undefined = now. 2^32-1 removes everything (a flush). */
  time?: number;
  /** Remove entries whose saddr or daddr it matches (match_ips: an AddressSet). */
  matchIPs?: AddressMatcher;
  /**
   * Remove the entries this test of their raw key and value selects, per family (a
   * DumpFilter compiled by flow-filter.ts, for a filtered Flush or Delete); null for a
   * family it rules out entirely.
   */
  select?: (family: Family) => ((keys: Buffer, koff: number, values: Buffer, voff: number) => boolean) | null;
  /**
   * Narrows the pass to the entries this test selects, per family (GCRunRequest.flow, a
   * DumpFilter compiled by flow-filter.ts): every other entry is kept and counted alive,
   * whatever the criteria above say; null for a family it rules out entirely. Unset =
   * every entry is a candidate.
   */
  flow?: (family: Family) => ((keys: Buffer, koff: number, values: Buffer, voff: number) => boolean) | null;
  /** Called for every kept entry, with the raw bytes (valid only during the call). */
  emitKept?: (ref: MapRef, keys: Buffer, koff: number, values: Buffer, voff: number) => void;
}

/** One deleted CT entry, published on its family's stream (Observe4 / Observe6). */
export interface GCEvent {
  readonly family: Family;
  readonly ref: MapRef;
  /** Per-family sequence number: 1, 2, 3, … with no gaps. */
  readonly sequence: number;
  /** The raw key bytes (a copy the receiver may keep). */
  readonly key: Buffer;
  /** The raw entry as it was when deleted (a copy). */
  readonly entry: Buffer;
}

export interface GCMapStats {
  readonly ref: MapRef;
  alive: number;
  deleted: number;
  /** Candidates already gone at delete time (LRU eviction, datapath): not an error. */
  skipped: number;
  /** Candidates the datapath refreshed between scan and delete: kept (and counted alive). */
  refreshed: number;
  maxEntries: number;
}

/** How far a running pass has got (GCRunOptions.onProgress; GCRunProgress in the proto). */
export interface GCPassProgress {
  /** The map being collected. */
  readonly ref: MapRef;
  /** Entries of that map scanned so far. */
  readonly scanned: number;
  /** Entries the pass deleted so far, over every map. */
  readonly deleted: number;
  /** Maps finished so far, of mapsTotal. */
  readonly mapsDone: number;
  readonly mapsTotal: number;
}

export interface GCRunResult {
  readonly maps: GCMapStats[];
  /** SNAT entries removed with the deleted CT entries. */
  natDeleted: number;
  durationNs: bigint;
  /** max over the maps of deleted / max_entries (the adaptive interval's input). */
  readonly ratio: number;
}

/**
 * How a candidate is re-checked right before deletion (the read-then-delete race, Cilium
 * #46298): EXPIRED_BEFORE deletes only if the entry's current lifetime is still < time;
 * ALWAYS deletes whatever the entry now holds (match_ips: the key decides, not the value).
 * The values of enum ct_gc_mode in bpf/ct_gc.h (checked by test/kernel/btf-layout.test.ts).
 */
export const DeleteMode = { EXPIRED_BEFORE: 0, ALWAYS: 1 } as const;

/** Per-candidate outcome written by a ConditionalDeleter: enum ct_gc_status in bpf/ct_gc.h. */
export const DeleteStatus = { DELETED: 0, MISSING: 1, REFRESHED: 2 } as const;

/**
 * Deletes a batch of candidates, re-checking each one at delete time. The kernel backend
 * does lookup + check + delete inside the kernel (a BPF program run with
 * BPF_PROG_TEST_RUN), one syscall per batch; the memory backend in process.
 */
export interface ConditionalDeleter {
  /**
   * For i < count: key i at keys[i*keySize]; modes[i] a DeleteMode; `time` the threshold
   * for EXPIRED_BEFORE. Writes status[i] (a DeleteStatus) and, for deleted entries, the
   * value as it was at deletion into values[i*valueSize]. Throws only on a backend failure.
   */
  deleteIf(map: BpfMap, keys: Buffer, count: number, modes: Uint8Array, time: number, status: Uint8Array, values: Buffer): void;
  close(): void;
}
