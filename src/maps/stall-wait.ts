/**
 * The pacing wait of a bounded buffer between a producer that may wait (a GC pass) and a
 * consumer that may stall (a gRPC subscriber): used by the Observe queue
 * (src/server/bounded-queue.ts) and the CT event bus's subscriptions
 * (src/maps/ctmap/events/bus.ts), which must behave alike.
 */

export interface StallWait {
  /** True once the producer may go on (room, or the buffer closed). */
  readonly fits: () => boolean;
  /** A count the consumer raises as it takes: unchanged for a whole period is a stall. */
  readonly progress: () => number;
  readonly stallMs: number;
  /** Registers a callback run after every take; returns its removal. */
  readonly onTake: (fn: () => void) => () => void;
  /** Runs when the wait gives up on a stalled consumer, before it resolves false. */
  readonly onStall: () => void;
}

/**
 * Resolves true as soon as fits() after a take, false when the consumer took nothing for a
 * whole stall period (detected within stallMs to 2*stallMs: one timer per wait, not one
 * per take). The caller checks fits() and its own "behind" state before calling.
 */
export function waitWhileConsumerProgresses(w: StallWait): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    let atLastTick = w.progress();
    const timer = setInterval(() => {
      if (w.progress() === atLastTick) {
        w.onStall();
        finish(false);
      }
      atLastTick = w.progress();
    }, w.stallMs);
    const remove = w.onTake(() => {
      if (w.fits()) finish(true);
    });
    const finish = (ok: boolean): void => {
      clearInterval(timer);
      remove();
      resolve(ok);
    };
  });
}
