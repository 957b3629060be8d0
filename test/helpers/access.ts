/**
 * Issue 12's access checks from the client side: every method of every service ctmapd
 * loads (its package definition: ctmap.v1, health, both reflection versions), called with
 * an empty request over given credentials, and the status it ended with.
 */
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../../src/api/proto';

export interface Method {
  /** "ctmap.v1.CTMaps" */
  readonly service: string;
  /** "Update" */
  readonly name: string;
  /** "/ctmap.v1.CTMaps/Update" */
  readonly path: string;
  readonly definition: grpc.ServiceDefinition;
}

/** Every method of every service in packageDefinition(), found by shape, not by a list. */
export function allMethods(): Method[] {
  const out: Method[] = [];
  for (const [service, v] of Object.entries(packageDefinition())) {
    const entries = Object.entries(v as object);
    if (entries.length === 0 || !entries.every(([, m]) => m && typeof m === 'object' && typeof m.path === 'string')) continue;
    for (const [name, m] of entries) out.push({ service, name, path: m.path, definition: v as unknown as grpc.ServiceDefinition });
  }
  return out;
}

/**
 * Calls `m` on `address` with an empty request (reflection: one list_services) and
 * resolves with the final status. Streams that would run on (Observe, WatchMembership,
 * Health.Watch) end at a 3 s deadline, so DEADLINE_EXCEEDED means "served" there: long
 * enough that a refusal arrives first on a loaded machine (0.5 s did not, on 2 cores under
 * a parallel build), and probes run in parallel so it is paid once; other calls get 5 s.
 */
export function probe(m: Method, address: string, credentials: grpc.ChannelCredentials, options: grpc.ChannelOptions = {}): Promise<grpc.StatusObject> {
  const Ctor = grpc.makeGenericClientConstructor(m.definition, m.service);
  const client = new Ctor(address, credentials, options) as unknown as Record<string, (...args: unknown[]) => any> & grpc.Client;
  const def = m.definition[m.name]!;
  const deadline = Date.now() + (def.responseStream ? 3000 : 5000);
  return new Promise<grpc.StatusObject>((resolve) => {
    if (!def.responseStream) {
      client[m.name]!({}, { deadline }, (err: grpc.ServiceError | null) => resolve(err ?? { code: grpc.status.OK, details: '', metadata: new grpc.Metadata() }));
      return;
    }
    const call = def.requestStream ? client[m.name]!({ deadline }) : client[m.name]!({}, { deadline });
    call.on('data', () => undefined);
    call.on('error', () => undefined); // the status carries it
    call.on('status', resolve);
    if (def.requestStream) {
      call.write({ list_services: '' });
      call.end();
    }
  }).finally(() => client.close());
}
