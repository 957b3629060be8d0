/**
 * The daemon's one teardown stack (libbpf-bootstrap: "teardown in one place"). Whatever
 * start brings up is pushed with the step that undoes it, in start order; drain() undoes
 * it all, last started first. A start that fails at any point and stop() drain the same
 * stack, so the two paths cannot disagree on what is closed or in which order.
 */
import { CtmapError } from '../errors';
import type { Logger } from './logger';

/** Undoes one started thing; may be async (it is awaited before the next step). */
export type TeardownStep = () => void | Promise<void>;

export class Teardown {
  readonly #log: Logger;
  readonly #steps: Array<{ readonly label: string; readonly step: TeardownStep }> = [];
  #draining?: Promise<void>;

  constructor(log: Logger) {
    this.#log = log;
  }

  /**
   * Adds the step that undoes what was just started, under `label` (in the logs). Throws
   * CtmapError internal once drain() has begun: nothing may start during teardown.
   */
  push(label: string, step: TeardownStep): void {
    if (this.#draining) throw new CtmapError('internal', `teardown: "${label}" pushed after the teardown began`);
    this.#steps.push({ label, step });
  }

  /**
   * Runs every step, last pushed first, each awaited before the next (logged at debug as
   * "teardown step"). A step that throws or rejects is logged under `err` and the rest
   * still run; once all have run the promise rejects with the first such error. Idempotent:
   * later calls return the same promise.
   */
  drain(): Promise<void> {
    this.#draining ??= (async () => {
      let failed: { err: unknown } | undefined;
      for (let s = this.#steps.pop(); s; s = this.#steps.pop()) {
        this.#log.debug({ step: s.label }, 'teardown step');
        try {
          await s.step();
        } catch (err) {
          this.#log.error({ err, step: s.label }, `teardown: ${s.label} failed; the rest still runs`);
          failed ??= { err };
        }
      }
      if (failed) throw failed.err;
    })();
    return this.#draining;
  }
}
