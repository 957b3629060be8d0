/**
 * Open-or-create with the attribute check (Cilium's OpenOrCreateMap + objCheck): a pinned
 * map whose type, key size, value size, max_entries and flags all match the spec is reused
 * with its entries. A mismatch is logged and, for now, the map is recreated (entries lost,
 * as in Cilium); issue 6 replaces this with migration.
 */
import type { Logger } from 'pino';
import { BpfMap, LiveMapInfo, MapBackend, MapSpec, mapTypeName } from './types';

export interface OpenResult {
  map: BpfMap;
  /** created: nothing was pinned; reused: compatible pinned map; recreated: mismatch replaced. */
  outcome: 'created' | 'reused' | 'recreated';
  /** What differed, for a recreated map ("max_entries 1024 -> 2048", …). */
  mismatches: string[];
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

export function openOrCreate(backend: MapBackend, spec: MapSpec, log: Logger): OpenResult {
  if (!spec.pinPath) return { map: backend.create(spec), outcome: 'created', mismatches: [] };
  const existing = backend.open(spec);
  if (!existing) {
    const map = backend.create(spec);
    log.info({ map: spec.name, pin: spec.pinPath, maxEntries: spec.maxEntries }, 'created map');
    return { map, outcome: 'created', mismatches: [] };
  }
  let mismatches: string[];
  try {
    mismatches = attributeMismatches(existing.info(), spec);
  } catch (err) {
    existing.close();
    throw err;
  }
  if (mismatches.length === 0) {
    log.info({ map: spec.name, pin: spec.pinPath, maxEntries: spec.maxEntries }, 'reusing pinned map');
    return { map: existing, outcome: 'reused', mismatches };
  }
  existing.close();
  log.warn(
    { map: spec.name, pin: spec.pinPath, mismatches },
    'pinned map attributes differ from the configuration: removing and recreating it (its entries are lost)',
  );
  backend.unpin(spec.pinPath);
  return { map: backend.create(spec), outcome: 'recreated', mismatches };
}
