/**
 * Keeps a long loop from holding the event loop (issue 12, item 7: a GC Run with 50,000
 * match_ips held every other call for seconds). The loop asks `spent()` between slices of
 * work (a clock read) and, when its budget is spent, awaits `giveTurn()`: one turn of the
 * event loop, in which pending I/O (other calls, timers) runs.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';

/** Work between turns of the event loop, by default: short against a call's latency. */
export const DEFAULT_BUDGET_MS = 10;

export class EventLoopBudget {
  #since = performance.now();

  constructor(readonly budgetMs = DEFAULT_BUDGET_MS) {}

  /** True when budgetMs has passed since the budget was made or last gave a turn. */
  spent(): boolean {
    return performance.now() - this.#since >= this.budgetMs;
  }

  /** Resolves after one turn of the event loop (setImmediate: after pending I/O) and restarts the budget. */
  async giveTurn(): Promise<void> {
    await nextTurn();
    this.#since = performance.now();
  }
}
