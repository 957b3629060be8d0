import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import type { Family } from '../../src/maps/addr';
import { GCScheduler, type GCPassReason, type GCSchedulerOptions, type SchedulerClock } from '../../src/maps/ctmap/gc/scheduler';
import type { GCRunResult } from '../../src/maps/ctmap/gc/types';
import { createLogger } from '../../src/daemon/logger';

const T0 = Date.UTC(2025, 0, 1); // virtual Unix ms at construction
const S = 1000;

/** Lets every promise chain that is ready run (setImmediate comes after all microtasks). */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Virtual time: timers fire only inside advance(), in due order, with the microtask queue
 * drained after each one so async passes can register their next timers.
 */
class FakeClock implements SchedulerClock {
  #now = T0;
  #seq = 0;
  readonly timers = new Map<number, { at: number; fn: () => void }>();
  readonly delays: number[] = [];

  now(): number {
    return this.#now;
  }
  setTimer(fn: () => void, delayMs: number): unknown {
    const id = ++this.#seq;
    this.timers.set(id, { at: this.#now + delayMs, fn });
    this.delays.push(delayMs);
    return id;
  }
  clearTimer(handle: unknown): void {
    this.timers.delete(handle as number);
  }
  /** Resolves after `ms` of virtual time (a pass that takes that long). */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.setTimer(resolve, ms));
  }
  async advance(ms: number): Promise<void> {
    const end = this.#now + ms;
    await settle();
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.#now = next[1].at;
      next[1].fn();
      await settle();
    }
    this.#now = end;
    await settle();
  }
}

/** GCRunResult with one map per kind; `deleted` on the TCP map gives `ratio` of 1024 entries. */
function result(ratio: number, alive = 100): GCRunResult {
  const maxEntries = 1024;
  const deleted = Math.round(ratio * maxEntries);
  return {
    maps: [
      { ref: { family: 'ipv4', kind: 'tcp', clusterId: 0 }, alive, deleted, skipped: 0, refreshed: 0, maxEntries },
      { ref: { family: 'ipv4', kind: 'any', clusterId: 0 }, alive: 1, deleted: 0, skipped: 0, refreshed: 0, maxEntries },
    ],
    natDeleted: 0,
    durationNs: 0n,
    ratio,
  };
}

function memoryLogger() {
  const lines: Array<Record<string, any>> = [];
  const log = createLogger('trace', { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

/** stop() while virtual time moves on, so passes that sleep on the FakeClock can finish. */
async function stopAll(clock: FakeClock, scheduler: GCScheduler): Promise<void> {
  let done = false;
  const stopping = scheduler.stop().then(() => (done = true));
  while (!done) await clock.advance(S);
  await stopping;
}

interface Call {
  readonly family: Family;
  readonly reason: GCPassReason;
  /** Virtual seconds since T0 when the pass started. */
  readonly at: number;
}

/**
 * A scheduler over a FakeClock whose runPass records every call, checks that no family ever
 * has two passes at once, and answers with `behave` (default: ratio 0.1 at once, which
 * keeps the interval unchanged).
 */
function harness(
  opts: Partial<GCSchedulerOptions> & {
    behave?: (family: Family, reason: GCPassReason, n: number, signal: AbortSignal) => Promise<GCRunResult>;
  } = {},
) {
  const clock = new FakeClock();
  const { log, lines } = memoryLogger();
  const calls: Call[] = [];
  const hooks: Array<{ family: Family; at: number }> = [];
  const inFlight: Record<Family, number> = { ipv4: 0, ipv6: 0 };
  const behave = opts.behave ?? (async () => result(0.1));
  const scheduler = new GCScheduler({
    families: ['ipv4', 'ipv6'],
    log,
    clock,
    afterSignal: (family) => void hooks.push({ family, at: (clock.now() - T0) / S }),
    ...opts,
    runPass: async (family, reason, signal) => {
      calls.push({ family, reason, at: (clock.now() - T0) / S });
      assert.equal(++inFlight[family], 1, `two concurrent ${family} passes`);
      try {
        return await behave(family, reason, calls.filter((c) => c.family === family).length, signal);
      } finally {
        inFlight[family]--;
      }
    },
  });
  const of = (family: Family) => calls.filter((c) => c.family === family);
  const statusOf = (family: Family) => scheduler.status().families.find((f) => f.family === family)!;
  return { clock, scheduler, calls, hooks, lines, of, statusOf };
}

describe('GCScheduler', () => {
  it('runs the first pass of every family at start, then every 5 min', async () => {
    const h = harness();
    h.scheduler.start();
    await settle();
    assert.deepEqual(h.calls, [
      { family: 'ipv4', reason: 'initial', at: 0 },
      { family: 'ipv6', reason: 'initial', at: 0 },
    ]);
    const st = h.statusOf('ipv4');
    assert.equal(st.intervalSeconds, 300);
    assert.equal(st.lastRunUnixMs, T0);
    assert.equal(st.nextRunUnixMs, T0 + 300 * S);
    assert.equal(st.runs, 1);
    assert.equal(st.alive, 101);
    assert.equal(st.deleted, 102); // round(0.1 × 1024)
    assert.equal(st.lastRatio, 0.1);
    assert.equal(st.running, false);
    assert.equal(h.scheduler.status().fixedInterval, false);
    assert.equal(h.scheduler.status().maxIntervalSeconds, 43200);

    await h.clock.advance(299 * S);
    assert.equal(h.calls.length, 2, 'nothing before the due time');
    await h.clock.advance(1 * S);
    assert.deepEqual(h.calls.slice(2), [
      { family: 'ipv4', reason: 'periodic', at: 300 },
      { family: 'ipv6', reason: 'periodic', at: 300 },
    ]);
    assert.equal(h.statusOf('ipv6').runs, 2);
    assert.equal(h.statusOf('ipv6').deleted, 204);
    await stopAll(h.clock, h.scheduler);
  });

  it('adapts the interval from each result', async () => {
    // ipv4 ratios in order: 0.4 -> 300×0.6 = 180; 0 -> 180×1.5 = 270; 0.5 -> 135; then 0.1 keeps 135.
    const ratios = [0.4, 0, 0.5];
    const h = harness({ families: ['ipv4'], behave: async (_f, _r, n) => result(ratios[n - 1] ?? 0.1) });
    h.scheduler.start();
    await h.clock.advance(1000 * S);
    assert.deepEqual(
      h.of('ipv4').map((c) => c.at),
      [0, 180, 180 + 270, 180 + 270 + 135, 180 + 270 + 135 * 2, 180 + 270 + 135 * 3, 180 + 270 + 135 * 4],
    );
    assert.equal(h.statusOf('ipv4').intervalSeconds, 135);
    const recalculated = h.lines.filter((l) => l.msg === 'ct gc interval recalculated');
    assert.deepEqual(
      recalculated.map((l) => [l.previousIntervalSeconds, l.intervalSeconds]),
      [
        [300, 180],
        [180, 270],
        [270, 135],
      ],
    );
    await stopAll(h.clock, h.scheduler);
  });

  it('measures the interval from the end of a pass', async () => {
    // Each pass takes 20 s: passes start at 0, 20+300 = 320, 320+20+300 = 640.
    const h = harness({ families: ['ipv6'], behave: async () => (await h.clock.sleep(20 * S), result(0.1)) });
    h.scheduler.start();
    await h.clock.advance(700 * S);
    assert.deepEqual(
      h.of('ipv6').map((c) => c.at),
      [0, 320, 640],
    );
    assert.equal(h.statusOf('ipv6').lastRunUnixMs, T0 + 660 * S);
    await stopAll(h.clock, h.scheduler);
  });

  it('keeps a fixed interval whatever the ratio', async () => {
    const h = harness({ families: ['ipv4'], fixedIntervalSeconds: 60, behave: async () => result(0.9) });
    h.scheduler.start();
    await h.clock.advance(200 * S);
    assert.deepEqual(
      h.of('ipv4').map((c) => c.at),
      [0, 60, 120, 180],
    );
    assert.equal(h.statusOf('ipv4').intervalSeconds, 60);
    assert.equal(h.scheduler.status().fixedInterval, true);
    await stopAll(h.clock, h.scheduler);
  });

  it('caps at --conntrack-gc-max-interval, also the first interval', async () => {
    // max 200: first interval min(300, 200) = 200; ratio 0 -> 300 -> capped 200.
    const h = harness({ families: ['ipv4'], maxIntervalSeconds: 200, behave: async () => result(0) });
    h.scheduler.start();
    await h.clock.advance(500 * S);
    assert.deepEqual(
      h.of('ipv4').map((c) => c.at),
      [0, 200, 400],
    );
    assert.equal(h.scheduler.status().maxIntervalSeconds, 200);
    await stopAll(h.clock, h.scheduler);
  });

  it('waits longer than setTimeout can in steps', async () => {
    const days = 30; // 2.592e9 ms > 2^31-1
    const h = harness({ families: ['ipv4'], fixedIntervalSeconds: days * 86400 });
    h.scheduler.start();
    await h.clock.advance(days * 86400 * S - 1);
    assert.equal(h.calls.length, 1);
    await h.clock.advance(1);
    assert.equal(h.calls.length, 2);
    assert.ok(Math.max(...h.clock.delays) <= 2 ** 31 - 1);
    await stopAll(h.clock, h.scheduler);
  });

  it('runs a signal pass for that family only, then the after-signal hook', async () => {
    const h = harness();
    h.scheduler.start();
    await h.clock.advance(100 * S);
    assert.equal(h.scheduler.signal('ipv4'), 'started');
    assert.equal(h.calls.length, 2, 'the pass starts on a later tick, not inside signal()');
    await settle();
    assert.deepEqual(h.calls.slice(2), [{ family: 'ipv4', reason: 'signal', at: 100 }]);
    assert.deepEqual(h.hooks, [{ family: 'ipv4', at: 100 }]);
    // ipv4 is rescheduled from its signal pass (early: 0.1 × 300/100 = 0.3 -> 300 × 0.7 =
    // 210 s, due at 310); ipv6 keeps its own due time.
    assert.equal(h.statusOf('ipv4').nextRunUnixMs, T0 + 310 * S);
    assert.equal(h.statusOf('ipv6').nextRunUnixMs, T0 + 300 * S);
    await stopAll(h.clock, h.scheduler);
  });

  it('applies the early-run correction with the time since the family last ran', async () => {
    // initial ratio 0 -> 450 s. Signal at 45 s, ratio 0.05: × 450/45 = 0.5 -> 450 × 0.5 = 225.
    const ratios = [0, 0.05];
    const h = harness({ families: ['ipv4'], behave: async (_f, _r, n) => result(ratios[n - 1] ?? 0.1) });
    h.scheduler.start();
    await h.clock.advance(45 * S);
    assert.equal(h.statusOf('ipv4').intervalSeconds, 450);
    h.scheduler.signal('ipv4');
    await settle();
    assert.equal(h.statusOf('ipv4').intervalSeconds, 225);
    assert.equal(h.statusOf('ipv4').nextRunUnixMs, T0 + (45 + 225) * S);
    await stopAll(h.clock, h.scheduler);
  });

  it('coalesces signals into the pending or running pass', async () => {
    // Passes take 10 s.
    const h = harness({ behave: async () => (await h.clock.sleep(10 * S), result(0.1)) });
    assert.equal(h.scheduler.signal('ipv4'), 'coalesced', 'before start: the initial pass serves it');
    h.scheduler.start();
    await h.clock.advance(10 * S);
    assert.deepEqual(h.hooks, [{ family: 'ipv4', at: 10 }], 'hook after the initial pass');

    await h.clock.advance(50 * S); // t = 60
    assert.equal(h.scheduler.signal('ipv4'), 'started');
    assert.equal(h.scheduler.signal('ipv4'), 'coalesced', 'pending');
    await h.clock.advance(5 * S);
    assert.equal(h.scheduler.signal('ipv4'), 'coalesced', 'running');
    assert.equal(h.statusOf('ipv4').running, true);
    assert.equal(h.statusOf('ipv4').nextRunUnixMs, 0);
    await h.clock.advance(5 * S); // t = 70: the signal pass ends
    assert.deepEqual(
      h.of('ipv4').map((c) => [c.reason, c.at]),
      [
        ['initial', 0],
        ['signal', 60],
      ],
    );
    assert.deepEqual(h.hooks, [
      { family: 'ipv4', at: 10 },
      { family: 'ipv4', at: 70 },
    ]);

    // A signal during a periodic pass joins it: no second pass, the hook runs after it.
    // ipv6 runs at 310 (ended at 10, 300 s interval). (ipv4 meanwhile: the early pass at 60
    // scaled 0.1 by 300/50 to 0.6 -> 120 s, so it runs 190-200 and 320-330.)
    await h.clock.advance(245 * S); // t = 315, ipv6 periodic pass running since 310
    assert.equal(h.scheduler.signal('ipv6'), 'coalesced');
    await h.clock.advance(10 * S);
    assert.deepEqual(
      h.of('ipv6').map((c) => [c.reason, c.at]),
      [
        ['initial', 0],
        ['periodic', 310],
      ],
    );
    assert.deepEqual(h.hooks.at(-1), { family: 'ipv6', at: 320 });
    await stopAll(h.clock, h.scheduler);
  });

  it('serves a signal that arrives during the hook with that hook', async () => {
    let releaseHook!: () => void;
    let hookRuns = 0;
    const h = harness({
      families: ['ipv4'],
      afterSignal: () => {
        hookRuns++;
        return new Promise<void>((resolve) => (releaseHook = resolve));
      },
    });
    h.scheduler.start();
    await settle();
    assert.equal(h.scheduler.signal('ipv4'), 'started');
    await settle();
    assert.equal(hookRuns, 1);
    assert.equal(h.scheduler.signal('ipv4'), 'coalesced');
    releaseHook();
    await h.clock.advance(300 * S); // the next periodic pass: no stale hook after it
    assert.equal(h.of('ipv4').length, 3);
    assert.equal(hookRuns, 1);
    await stopAll(h.clock, h.scheduler);
  });

  it('never starves IPv6 while IPv4 is signalled every second for an hour (Cilium #40820)', async () => {
    // IPv4 passes take 2.5 s, so most signals land on a running pass and coalesce; IPv6
    // passes take no time and keep ratio 0.1, so its interval stays 300 s.
    const h = harness({
      behave: async (family) => {
        if (family === 'ipv4') await h.clock.sleep(2500);
        return result(family === 'ipv4' ? 0.01 : 0.1);
      },
    });
    h.scheduler.start();
    for (let t = 1; t <= 3600; t++) {
      await h.clock.advance(S);
      assert.notEqual(h.scheduler.signal('ipv4'), 'stopped');
    }
    const v6 = h.of('ipv6');
    assert.deepEqual(
      v6.map((c) => c.at),
      [0, 300, 600, 900, 1200, 1500, 1800, 2100, 2400, 2700, 3000, 3300, 3600],
    );
    assert.ok(v6.slice(1).every((c) => c.reason === 'periodic'));
    // IPv4 did run its signal passes (back to back, one at a time) all along.
    const v4signals = h.of('ipv4').filter((c) => c.reason === 'signal');
    assert.ok(v4signals.length > 1000, `${v4signals.length} ipv4 signal passes`);
    assert.ok(v4signals.at(-1)!.at >= 3595);
    assert.equal(h.hooks.filter((x) => x.family === 'ipv6').length, 0);
    await stopAll(h.clock, h.scheduler);
  });

  it('stop cancels the timers and waits for the running pass', async () => {
    let finish!: (r: GCRunResult) => void;
    let seenSignal: AbortSignal | undefined;
    const h = harness({
      families: ['ipv4'],
      behave: (_f, _r, _n, signal) => {
        seenSignal = signal;
        return new Promise((resolve) => (finish = resolve));
      },
    });
    h.scheduler.start();
    await settle();
    assert.equal(h.calls.length, 1);
    let stopped = false;
    const stopping = h.scheduler.stop().then(() => (stopped = true));
    await h.clock.advance(3600 * S);
    assert.equal(stopped, false, 'stop waits for the pass');
    assert.equal(seenSignal?.aborted, false, 'a plain stop does not abort the pass');
    assert.equal(h.scheduler.signal('ipv4'), 'stopped');
    finish(result(0.1));
    await stopping;
    assert.equal(stopped, true);
    assert.equal(h.clock.timers.size, 0, 'no timer left');
    await h.clock.advance(3600 * S);
    assert.equal(h.calls.length, 1, 'nothing runs after stop');
    assert.equal(h.statusOf('ipv4').nextRunUnixMs, 0);
    assert.strictEqual(h.scheduler.stop(), h.scheduler.stop(), 'idempotent');
    assert.throws(() => h.scheduler.start(), /start after stop/);
  });

  it('stop({ abort: true }) aborts the running pass', async () => {
    const h = harness({
      families: ['ipv4'],
      behave: (_f, _r, _n, signal) =>
        new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true })),
    });
    h.scheduler.start();
    await settle();
    await h.scheduler.stop({ abort: true });
    assert.equal(h.statusOf('ipv4').failures, 1);
    assert.equal(h.clock.timers.size, 0);
  });

  it('logs a failing pass and retries it at the current interval', async () => {
    // Pass 1 (initial) ratio 0.4 -> 180 s; pass 2 fails -> still 180 s; pass 3 succeeds.
    const h = harness({
      families: ['ipv4'],
      behave: async (_f, _r, n) => {
        if (n === 2) throw new Error('bpf batch lookup: EIO');
        return result(n === 1 ? 0.4 : 0.1);
      },
    });
    h.scheduler.start();
    await h.clock.advance(180 * S);
    const failed = h.lines.filter((l) => l.msg === 'ct gc pass failed; retrying at the current interval');
    assert.equal(failed.length, 1);
    assert.equal(failed[0].level, 50);
    assert.equal(failed[0].family, 'ipv4');
    assert.equal(failed[0].reason, 'periodic');
    assert.match(failed[0].err.message, /EIO/);
    const st = h.statusOf('ipv4');
    assert.equal(st.intervalSeconds, 180);
    assert.equal(st.failures, 1);
    assert.equal(st.runs, 2);
    assert.equal(st.nextRunUnixMs, T0 + 360 * S);
    await h.clock.advance(180 * S);
    assert.deepEqual(
      h.of('ipv4').map((c) => c.at),
      [0, 180, 360],
    );
    assert.equal(h.statusOf('ipv4').failures, 1);
    await stopAll(h.clock, h.scheduler);
  });

  it('logs a failing hook and a malformed ratio, and carries on', async () => {
    const h = harness({
      families: ['ipv4'],
      behave: async (_f, _r, n) => (n === 2 ? { ...result(0.1), ratio: Number.NaN } : result(0.1)),
      afterSignal: () => Promise.reject(new Error('nat purge failed')),
    });
    h.scheduler.start();
    await settle();
    h.scheduler.signal('ipv4');
    await settle();
    assert.ok(h.lines.some((l) => l.msg === 'ct gc: after-signal hook failed' && /nat purge/.test(l.err.message)));
    assert.ok(h.lines.some((l) => l.msg === 'ct gc: cannot adapt the interval; keeping it'));
    assert.equal(h.statusOf('ipv4').intervalSeconds, 300);
    await h.clock.advance(300 * S);
    assert.equal(h.of('ipv4').length, 3);
    await stopAll(h.clock, h.scheduler);
  });

  it('survives a malformed result and reschedules the family', async () => {
    const h = harness({ families: ['ipv4'], behave: async () => ({}) as GCRunResult });
    h.scheduler.start();
    await settle();
    assert.ok(h.lines.some((l) => l.msg === 'ct gc: cannot account for a pass; keeping the interval'));
    assert.equal(h.statusOf('ipv4').running, false);
    assert.equal(h.statusOf('ipv4').nextRunUnixMs, T0 + 300 * S);
    await h.clock.advance(300 * S);
    assert.equal(h.of('ipv4').length, 2);
    await stopAll(h.clock, h.scheduler);
  });

  it('answers signals for a disabled family and counts external passes', async () => {
    const h = harness({ families: ['ipv4'] });
    assert.equal(h.scheduler.signal('ipv6'), 'disabled');
    h.scheduler.recordExternalPass('ipv4', result(0.5, 7));
    const st = h.statusOf('ipv4');
    assert.equal(st.runs, 1);
    assert.equal(st.alive, 8);
    assert.equal(st.deleted, 512);
    assert.equal(st.lastRatio, 0.5);
    assert.equal(st.lastRunUnixMs, Math.round(h.clock.now()), 'a manual pass is the last run (issue 14 item 6)');
    assert.equal(st.lastPassReason, 'manual');
    assert.equal(st.intervalSeconds, 300);
    await stopAll(h.clock, h.scheduler);
  });

  it('a manual pass between periodic ones moves the last run, not the next one', async () => {
    const h = harness({ families: ['ipv4'] });
    h.scheduler.start();
    await settle();
    const before = h.statusOf('ipv4');
    await h.clock.advance(100 * S);
    h.scheduler.recordExternalPass('ipv4', result(0.1, 7));
    const after = h.statusOf('ipv4');
    assert.equal(after.lastRunUnixMs, Math.round(h.clock.now()));
    assert.ok(after.lastRunUnixMs > before.lastRunUnixMs);
    assert.equal(after.lastPassReason, 'manual');
    assert.equal(after.nextRunUnixMs, before.nextRunUnixMs, 'the periodic pass stays due when it was');
    assert.equal(after.runs, before.runs + 1);
    await stopAll(h.clock, h.scheduler);
  });
});
