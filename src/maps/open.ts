/**
 * The attribute check (Cilium's objCheck) and a synchronous open-or-create for maps opened
 * while the daemon runs (a cluster joining). Maps that exist at start go through
 * MapLifecycle (lifecycle.ts), which migrates a map whose attributes changed; by the time
 * the daemon serves, every pinned map it owns is compatible, so a mismatch here means a
 * pin made by someone else and is refused rather than recreated (nothing lost silently).
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
  const existing = backend.open(spec);
  if (!existing) {
    const map = backend.create(spec);
    log.info({ map: spec.name, pin: spec.pinPath, maxEntries: spec.maxEntries }, 'created map');
    return { map, outcome: 'created' };
  }
  let mismatches: string[];
  try {
    mismatches = attributeMismatches(existing.info(), { ...spec, maxEntries: backend.effectiveMaxEntries(spec) });
  } catch (err) {
    existing.close();
    throw err;
  }
  if (mismatches.length > 0) {
    existing.close();
    throw new CtmapError('failed-precondition', `pinned map ${spec.pinPath} differs from the configuration (${mismatches.join(', ')}); restart ctmapd to migrate it`);
  }
  log.info({ map: spec.name, pin: spec.pinPath, maxEntries: spec.maxEntries }, 'reusing pinned map');
  return { map: existing, outcome: 'reused' };
}
