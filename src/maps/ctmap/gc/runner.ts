/**
 * Runs GC passes: resolves which maps a pass covers, serialises passes per family (a
 * scheduled pass and a Run request never scan the same family at once, so counts stay
 * exact), and adds up what the NAT coupling removed while the pass ran.
 */
import { Family } from '../../addr';
import { MapRef } from '../spec';
import { CtTable, CtTables } from '../tables';
import { GCEngine, GCRunOptions } from './engine';
import { GCFilter, GCRunResult } from './types';

/** The NAT coupling as the runner sees it (src/maps/nat/coupling.ts). */
export interface NatDeletionCounter {
  /**
   * NAT entries removed so far by the coupling (monotonic). The coupling removes a
   * batch's mappings while the batch is published, so this is complete when a pass ends.
   */
  readonly deletedTotal: number;
}

export interface GCPassRequest {
  /** Family to collect; undefined = both (ignored when refs is set). */
  family?: Family;
  /** Maps to collect; empty/undefined = every open CT map of the family. */
  refs?: MapRef[];
  filter: GCFilter;
  signal?: AbortSignal;
  afterBatch?: GCRunOptions['afterBatch'];
  onProgress?: GCRunOptions['onProgress'];
  beforeDelete?: GCRunOptions['beforeDelete'];
  /** See GCRunOptions.eventReason. */
  eventReason?: GCRunOptions['eventReason'];
}

export class GCRunner {
  readonly #queues: Record<Family, Promise<unknown>> = { ipv4: Promise.resolve(), ipv6: Promise.resolve() };

  constructor(
    readonly tables: CtTables,
    readonly engine: GCEngine,
    private readonly nat?: NatDeletionCounter,
  ) {}

  /** The maps a request covers (validates refs: INVALID_ARGUMENT / NOT_FOUND naming `maps[i]`). */
  select(req: Pick<GCPassRequest, 'family' | 'refs'>): CtTable[] {
    if (req.refs && req.refs.length > 0) return this.tables.resolve(req.refs, 'maps');
    return this.tables.active().filter((t) => req.family === undefined || t.ref.family === req.family);
  }

  /** One pass; waits for passes already running over the same families. */
  async run(req: GCPassRequest): Promise<GCRunResult> {
    const tables = this.select(req);
    const families = [...new Set(tables.map((t) => t.ref.family))].sort();
    const waitFor = families.map((f) => this.#queues[f]);
    const pass = Promise.all(waitFor.map((p) => p.catch(() => undefined))).then(async () => {
      const natBefore = this.nat?.deletedTotal ?? 0;
      const result = await this.engine.run({ tables, filter: req.filter, signal: req.signal, afterBatch: req.afterBatch, onProgress: req.onProgress, beforeDelete: req.beforeDelete, eventReason: req.eventReason });
      result.natDeleted = (this.nat?.deletedTotal ?? 0) - natBefore;
      return result;
    });
    for (const f of families) this.#queues[f] = pass;
    return pass;
  }
}
