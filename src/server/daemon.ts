/**
 * Wires the daemon together: backend -> bpffs -> CT maps -> gRPC services -> SERVING.
 * `startDaemon` is what bin/ctmapd runs and what tests start in-process.
 */
import { ensureBpffs } from '../maps/bpffs';
import { selectBackend } from '../maps/backend';
import { CtTables } from '../maps/ctmap/tables';
import { refLabel } from '../maps/ctmap/spec';
import type { MapBackend } from '../maps/types';
import type { Config } from './config';
import { ctMapsDefinition, ctMapsService } from './ctmaps-service';
import type { Logger } from './logger';
import { services } from './proto';
import { ServerHandle, startServer } from './server';

export interface Daemon {
  readonly backend: MapBackend;
  readonly tables: CtTables;
  readonly server: ServerHandle;
  /** Health NOT_SERVING, streams ended, server closed, maps closed; pins are kept. Idempotent. */
  stop(graceMs?: number): Promise<void>;
}

export async function startDaemon(config: Config, log: Logger): Promise<Daemon> {
  const backend = selectBackend(config.backend, log);
  if (backend.name === 'kernel') ensureBpffs(config.bpfRoot, log);
  const tables = CtTables.open(
    backend,
    {
      bpfRoot: config.bpfRoot,
      enableIPv4: config.enableIpv4,
      enableIPv6: config.enableIpv6,
      ctTcpMax: config.bpfCtGlobalTcpMax,
      ctAnyMax: config.bpfCtGlobalAnyMax,
      distributedLru: config.bpfDistributedLru,
    },
    log,
  );
  let server: ServerHandle;
  try {
    const shutdown = new AbortController();
    server = await startServer({
      config,
      log,
      shutdown,
      services: [{ definition: ctMapsDefinition(services().CTMaps.service), implementation: ctMapsService(tables, log, shutdown.signal) }],
    });
  } catch (err) {
    tables.close();
    throw err;
  }
  server.markServing();
  log.info(
    { addresses: server.addresses, backend: backend.name, maps: tables.active().map((t) => ({ map: refLabel(t.ref), pin: t.map.spec.pinPath, maxEntries: t.map.spec.maxEntries })) },
    'ctmapd serving',
  );

  let stopping: Promise<void> | undefined;
  return {
    backend,
    tables,
    server,
    stop(graceMs = 5000) {
      stopping ??= (async () => {
        await server.shutdown(graceMs);
        tables.close();
        log.info('ctmapd stopped; maps stay pinned');
      })();
      return stopping;
    },
  };
}
