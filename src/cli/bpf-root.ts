/**
 * Which bpffs `ctmap datapath` and `ctmap fate` load over when the user named none: the
 * one the daemon runs with (ActiveMaps.bpf_root), so that --bpf-root is set once, on the
 * daemon. An explicit --bpf-root or CTMAPD_BPF_ROOT is used as given (args.ts decides).
 */
import * as grpc from '@grpc/grpc-js';
import { CtMapsClient, ctMapsClient } from '../api/clients';
import type { ActiveMapsResponseMsg } from '../api/ct-proto';
import type { CliServer } from './args';
import { connection } from './client';
import type { Io } from './datapath';

/** How long the daemon gets to answer before the default is used. */
const ASK_TIMEOUT_MS = 3000;

/**
 * The bpf-root to use: `cmd.bpfRoot` when it was explicit (no `bpfRootFromDaemon`); else
 * the daemon's. When the daemon does not answer, names no bpf-root or runs the memory
 * backend (whose bpf-root is no mount), the default `cmd.bpfRoot`, with a note on stderr
 * saying why. Never rejects: the command itself reports what is missing under that root.
 */
export async function resolveBpfRoot(cmd: { readonly bpfRoot: string; readonly bpfRootFromDaemon?: CliServer }, io: Io): Promise<string> {
  const server = cmd.bpfRootFromDaemon;
  if (!server) return cmd.bpfRoot;
  const fallback = (why: string): string => {
    io.err(`ctmap: ${why}; using --bpf-root ${cmd.bpfRoot} (give --bpf-root to choose)\n`);
    return cmd.bpfRoot;
  };
  let client: CtMapsClient;
  try {
    client = ctMapsClient(...connection(server));
  } catch (err) {
    return fallback(`cannot reach ctmapd for its bpf-root: ${(err as Error).message}`);
  }
  try {
    const res = await new Promise<ActiveMapsResponseMsg>((resolve, reject) =>
      client.ActiveMaps({}, { deadline: Date.now() + ASK_TIMEOUT_MS }, (err, r) => (err ? reject(err) : resolve(r as ActiveMapsResponseMsg))),
    );
    if (res.maps.some((m) => m.backend === 'memory')) return fallback(`ctmapd (${server.target}) runs the memory backend, whose bpf-root ${res.bpf_root} is no bpffs`);
    if (!res.bpf_root) return fallback(`ctmapd (${server.target}) did not say which bpf-root it runs with`);
    return res.bpf_root;
  } catch (err) {
    const e = err as grpc.ServiceError;
    return fallback(`no answer from ctmapd at ${server.target} for its bpf-root (${grpc.status[e.code] ?? e.code}: ${e.details})`);
  } finally {
    client.close();
  }
}
