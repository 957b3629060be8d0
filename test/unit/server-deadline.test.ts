/**
 * Issue 12, defect 11: when the server's own deadline timer (call-boundary.ts) fires before
 * grpc-js's, the status it sends must be DEADLINE_EXCEEDED, not UNAVAILABLE. A raw HTTP/2
 * client (no deadline timer of its own) reads the grpc-status the server sent.
 *
 * Which timer fires first is a race of two timers for one instant (8-11 of 300 Observe
 * calls went the server's way). Here it is made deterministic: setTimeout is mocked (Date
 * is not), grpc-js arms its timer for the whole grpc-timeout when the headers arrive, and
 * a request decoder that takes real milliseconds makes the boundary's timer, armed for
 * what is left of the deadline when the handler starts, the earlier one. The test then
 * advances the mocked clock to the boundary's timer only, lets its status go out, and
 * only then to grpc-js's.
 */
import { after, before, describe, it, mock } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { createLogger } from '../../src/daemon/logger';
import { services } from '../../src/api/proto';
import { startServer, type ServerHandle } from '../../src/server/server';
import { serverStream, unary } from '../../src/server/call-boundary';
import { tempDir } from '../helpers/grpc';
import { rawCall } from '../helpers/raw-grpc';

const DEADLINE_MS = 1000;
/** Real time the request decoder takes: the boundary's timer is armed this much shorter. */
const DECODE_MS = 20;

/** Keeps the event loop busy for `ms` (the slow request decoder). */
function busy(ms: number): void {
  for (const end = Date.now() + ms; Date.now() < end; );
}

describe('the server-side deadline (issue 12, defect 11)', () => {
  const dir = tempDir();
  let handle: ServerHandle;
  let started = false;

  before(async () => {
    const log = createLogger('warn', { write: () => undefined });
    const shutdown = new AbortController();
    const base = services().GCRunner.service;
    const slow = (m: grpc.MethodDefinition<unknown, unknown>) => ({
      ...m,
      requestDeserialize: (buf: Buffer) => {
        busy(DECODE_MS);
        started = true;
        return m.requestDeserialize(buf);
      },
    });
    const waitForAbort = async (_req: unknown, ctx: { signal: AbortSignal }) => {
      await new Promise((resolve) => ctx.signal.addEventListener('abort', resolve, { once: true }));
      throw ctx.signal.reason;
    };
    handle = await startServer({
      config: { socket: `${dir.dir}/ctmapd.sock` },
      log,
      shutdown,
      services: [
        {
          definition: { ...base, Observe: slow(base.Observe!), Status: slow(base.Status!) } as grpc.ServiceDefinition,
          implementation: {
            Observe: serverStream(log, 'GCRunner/Observe', (req, _w, ctx) => waitForAbort(req, ctx), shutdown.signal),
            Status: unary(log, 'GCRunner/Status', waitForAbort, shutdown.signal),
          },
        },
      ],
    });
  });

  after(async () => {
    await handle.shutdown(1000);
    dir.cleanup();
  });

  /** One call whose deadline the boundary's timer reaches first; resolves with what the server sent. */
  async function callTimingOut(method: string) {
    started = false;
    mock.timers.enable({ apis: ['setTimeout'] });
    try {
      const reply = rawCall(handle.addresses[0]!, `/ctmap.v1.GCRunner/${method}`, Buffer.alloc(0), { timeout: `${DEADLINE_MS}m` });
      const turn = () => new Promise((resolve) => setImmediate(resolve));
      while (!started) await turn();
      await turn();
      // The boundary's timer (armed for at most DEADLINE_MS - DECODE_MS) fires alone ...
      mock.timers.tick(DEADLINE_MS - DECODE_MS);
      for (let i = 0; i < 5; i++) await turn();
      // ... and grpc-js's only once the server's answer is out.
      mock.timers.tick(DECODE_MS);
      return await reply;
    } finally {
      mock.timers.reset();
    }
  }

  for (const method of ['Observe', 'Status']) {
    it(`${method}: the server's own deadline answers DEADLINE_EXCEEDED`, async () => {
      const reply = await callTimingOut(method);
      assert.equal(reply.status, grpc.status.DEADLINE_EXCEEDED, `${grpc.status[reply.status]}: ${reply.message}`);
    });
  }
});
