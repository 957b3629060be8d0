/**
 * The ctmap.v1.CTEvents service (issue 13): every CT lifecycle event of the bus, per
 * subscriber with its own bounded buffer, as one message per event (Watch) or many per
 * message (WatchBatched). Messages are encoded from the events' bytes (events-proto.ts)
 * and written with flow control: a client that reads slowly fills its own buffer, is told
 * exactly what it lost, and never holds producers back for longer than a stall period.
 */
import type * as grpc from '@grpc/grpc-js';
import { ctNow } from '../../maps/clock';
import type { CtBusItem, CtEventBus } from '../../maps/ctmap/events/bus';
import { acceptEncodedResponses } from '../../api/ct-wire';
import { WatchCtEventsRequestMsg, encodeEventBatch, encodeEventMessages, parseWatchRequest } from '../../api/events-proto';
import { services } from '../../api/proto';
import { CallContext, StreamWriter, serverStream } from '../call-boundary';
import type { ServiceDeps, ServiceRegistration } from '../server';

/** What ctEventsService needs. */
export interface CtEventsServiceDeps extends ServiceDeps {
  readonly bus: CtEventBus;
  /** Events buffered per subscriber before it loses some (default: the bus's). */
  readonly subscriberBuffer?: number;
}

/**
 * Events per WatchBatched message: ~180 bytes each keeps a message near 0.75 MiB, under
 * the 4 MiB a client accepts by default.
 */
export const EVENTS_PER_BATCH = 4096;
/** Events Watch takes from the buffer at once (then writes one message each). */
const EVENTS_PER_TAKE = 256;

/** The CTEvents service over `deps.bus`. `deps.shutdown` ends the streams when the server stops. */
export function ctEventsService(deps: CtEventsServiceDeps): ServiceRegistration {
  const { bus, log, shutdown } = deps;

  /** Subscribes for the call and hands every item to `send` until the call ends. */
  async function watch(req: WatchCtEventsRequestMsg, ctx: CallContext, maxEvents: number, send: (item: CtBusItem) => Promise<void>): Promise<void> {
    const filter = await parseWatchRequest(req); // before subscribing: a bad request subscribes nothing
    const sub = bus.subscribe({ ...filter, buffer: deps.subscriberBuffer });
    const onAbort = () => sub.close();
    ctx.signal.addEventListener('abort', onAbort);
    try {
      for (let item = await sub.take(maxEvents); item && !ctx.signal.aborted; item = await sub.take(maxEvents)) {
        if (item.kind === 'lost' && item.at === 'subscriber') ctx.log.warn({ lost: item.count, family: item.family }, 'CTEvents subscriber fell behind; events dropped and reported');
        await send(item);
      }
    } finally {
      sub.close();
      ctx.signal.removeEventListener('abort', onAbort);
    }
    if (ctx.signal.aborted) throw ctx.signal.reason;
  }

  const implementation: grpc.UntypedServiceImplementation = {
    Watch: serverStream(log, 'CTEvents/Watch', async (req: WatchCtEventsRequestMsg, writer: StreamWriter<Buffer>, ctx) => {
      await watch(req, ctx, EVENTS_PER_TAKE, async (item) => {
        for (const m of encodeEventMessages(item, ctNow())) await writer.write(m);
      });
    }, shutdown),

    WatchBatched: serverStream(log, 'CTEvents/WatchBatched', async (req: WatchCtEventsRequestMsg, writer: StreamWriter<Buffer>, ctx) => {
      await watch(req, ctx, EVENTS_PER_BATCH, (item) => writer.write(encodeEventBatch(item, ctNow())));
    }, shutdown),
  };
  return { definition: acceptEncodedResponses(services().CTEvents.service, ['Watch', 'WatchBatched']), implementation };
}
