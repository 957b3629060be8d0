/**
 * The one path that opens a pinned map and checks it against a spec (openPinned), used by
 * everything that opens a pin: MapLifecycle (lifecycle.ts) at start, openOrCreate for maps
 * opened while the daemon runs (a cluster joining, the datapath side maps), and the
 * datapath loader (src/datapath/loader.ts) for the maps it hands its object.
 *
 * Maps that exist at start go through MapLifecycle, which migrates a map whose attributes
 * changed; by the time the daemon serves, every pinned map it owns is compatible, so a
 * mismatch in openOrCreate means a pin made by someone else and is refused rather than
 * recreated (nothing lost silently).
 */
import type { Logger } from 'pino';
import { CtmapError } from '../errors';
import { BpfMap, LiveMapInfo, MapBackend, MapSpec, mapTypeName } from './types';

export interface OpenResult {
  map: BpfMap;
  /** created: nothing was pinned; reused: compatible pinned map. */
  outcome: 'created' | 'reused';
}

/** `<pin>_old`: during a migration, the map being migrated away from (lifecycle.ts). */
export function oldPinPath(pin: string): string {
  return `${pin}_old`;
}

/** `<pin>_new`: during a migration or a replacement, the new map while it is filled. */
export function newPinPath(pin: string): string {
  return `${pin}_new`;
}

/** Attribute differences between a live map and a spec; empty when compatible. */
export function attributeMismatches(info: LiveMapInfo, spec: MapSpec): string[] {
  const out: string[] = [];
  if (info.type !== spec.type) out.push(`type ${mapTypeName(info.type)} -> ${mapTypeName(spec.type)}`);
  if (info.keySize !== spec.keySize) out.push(`key_size ${info.keySize} -> ${spec.keySize}`);
  if (info.valueSize !== spec.valueSize) out.push(`value_size ${info.valueSize} -> ${spec.valueSize}`);
  if (info.maxEntries !== spec.maxEntries) out.push(`max_entries ${info.maxEntries} -> ${spec.maxEntries}`);
  if (info.flags !== spec.flags) out.push(`flags 0x${info.flags.toString(16)} -> 0x${spec.flags.toString(16)}`);
  return out;
}

/**
 * What a refused mismatch says the spec comes from: the daemon's `configuration` (its flags
 * size the maps) or this `build` (layouts compiled into ctmapd and bpf/).
 */
export interface MismatchRefusal {
  readonly expected: 'configuration' | 'build';
  /** What to do about it, e.g. "restart ctmapd to migrate it". */
  readonly remedy: string;
}

/**
 * The one wording of a pinned map that differs from its spec: failed-precondition
 * `pinned map <pin> differs from <the configuration | what this build expects> (<what
 * differs>): <remedy>`.
 */
export function pinnedMismatch(spec: MapSpec, mismatches: readonly string[], refusal: MismatchRefusal): CtmapError {
  const expected = refusal.expected === 'build' ? 'what this build expects' : 'the configuration';
  return new CtmapError('failed-precondition', `pinned map ${spec.pinPath} differs from ${expected} (${mismatches.join(', ')}): ${refusal.remedy}`);
}

/** A map opened from its pin, with what the backend reports of it. */
export interface PinnedMap<M extends BpfMap = BpfMap> {
  readonly map: M;
  readonly info: LiveMapInfo;
  /** What differs from the spec (attributeMismatches); empty when compatible. */
  readonly mismatches: readonly string[];
}

/** The part of a backend openPinned uses; `M` is the backend's map class (KernelMap: its fd). */
export type PinOpener<M extends BpfMap> = Pick<MapBackend, 'effectiveMaxEntries'> & { open(spec: MapSpec): M | undefined };

/**
 * Opens the map pinned at spec.pinPath and compares its attributes with `spec` (max_entries
 * as the backend would create it: effectiveMaxEntries). Returns undefined when nothing is
 * pinned there. With `refuse`, a map that differs is closed and refused (pinnedMismatch);
 * without it, the caller decides on the mismatches (MapLifecycle migrates). Throws what
 * the backend throws, the map closed first.
 */
export function openPinned<M extends BpfMap>(backend: PinOpener<M>, spec: MapSpec, refuse?: MismatchRefusal): PinnedMap<M> | undefined {
  const map = backend.open(spec);
  if (!map) return undefined;
  let pinned: PinnedMap<M>;
  try {
    const info = map.info();
    pinned = { map, info, mismatches: attributeMismatches(info, { ...spec, maxEntries: backend.effectiveMaxEntries(spec) }) };
  } catch (err) {
    map.close();
    throw err;
  }
  if (refuse && pinned.mismatches.length > 0) {
    map.close();
    throw pinnedMismatch(spec, pinned.mismatches, refuse);
  }
  return pinned;
}

/**
 * Opens the map pinned at spec.pinPath when its attributes match (reused), or creates and
 * pins it when nothing is pinned there (created). Throws failed-precondition when the
 * pinned map differs or a migration of it is pending (an `_old` pin: a restart finishes
 * it), and what the backend throws. Unpinned specs are created.
 */
export function openOrCreate(backend: MapBackend, spec: MapSpec, log: Logger): OpenResult {
  if (!spec.pinPath) return { map: backend.create(spec), outcome: 'created' };
  if (backend.pinnedInfo(oldPinPath(spec.pinPath)) || backend.pinnedInfo(newPinPath(spec.pinPath))) {
    throw new CtmapError('failed-precondition', `map ${spec.pinPath}: an interrupted migration is pinned next to it; restart ctmapd to finish or undo it`);
  }
  const existing = openPinned(backend, spec, { expected: 'configuration', remedy: 'restart ctmapd to migrate it' });
  if (!existing) {
    const map = backend.create(spec);
    log.info({ map: spec.name, pin: spec.pinPath, maxEntries: spec.maxEntries }, 'created map');
    return { map, outcome: 'created' };
  }
  log.info({ map: spec.name, pin: spec.pinPath, maxEntries: spec.maxEntries }, 'reusing pinned map');
  return { map: existing.map, outcome: 'reused' };
}
