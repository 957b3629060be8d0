/**
 * One status line on stderr for the long `ctmap` operations (gc run, ct list, ct delete,
 * ct flush), as a terminal user expects: rewritten in place with \r, cleared when the
 * operation ends, and never written when stderr is not a terminal, so that scripts and
 * logs see only the result.
 */

/** Where progress goes, and whether it is a terminal (process.stderr.isTTY; injectable for tests). */
export interface ProgressTarget {
  write(text: string): void;
  readonly isTTY: boolean;
}

/** Erases the rest of the line (ANSI EL): a shorter line leaves nothing of a longer one. */
const CLEAR_TO_END = '\x1b[K';

export class Progress {
  #shown = false;
  #last = -Infinity;
  #timer: NodeJS.Timeout | undefined;

  /**
   * `minIntervalMs` bounds how often update() redraws (a dump reports every batch);
   * `now` is the clock that bounds it (tests pass their own).
   */
  constructor(
    private readonly target: ProgressTarget,
    private readonly minIntervalMs = 100,
    private readonly now: () => number = Date.now,
  ) {}

  /** True when this writes anything at all. */
  get active(): boolean {
    return this.target.isTTY;
  }

  /** Shows `text` in place of the previous line; at most every minIntervalMs unless `force`. */
  update(text: string, force = false): void {
    if (!this.target.isTTY) return;
    const t = this.now();
    if (!force && t - this.#last < this.minIntervalMs) return;
    this.#last = t;
    this.target.write(`\r${text}${CLEAR_TO_END}`);
    this.#shown = true;
  }

  /**
   * Shows "`label` N s" once a second while a call is outstanding (a unary call reports no
   * progress of its own: elapsed time says it has not hung). The first line comes after a
   * second, so a quick call shows nothing. Returns the stop, which also clears the line.
   */
  elapsed(label: string, everyMs = 1000): () => void {
    if (!this.target.isTTY) return () => undefined;
    const started = this.now();
    this.#timer = setInterval(() => this.update(`${label} ${Math.round((this.now() - started) / 1000)} s`, true), everyMs);
    this.#timer.unref();
    return () => this.done();
  }

  /** Removes the line, so that what is printed next starts on a clean line. */
  clear(): void {
    if (!this.#shown) return;
    this.target.write(`\r${CLEAR_TO_END}`);
    this.#shown = false;
  }

  /** Stops any elapsed() timer and removes the line. Idempotent. */
  done(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    this.clear();
  }
}

/** The Progress of a command's stderr: `io.err`, a terminal only when `io.errIsTTY`. */
export function progressOf(io: { err(text: string): void; readonly errIsTTY?: boolean }, minIntervalMs?: number): Progress {
  return new Progress({ write: (text) => io.err(text), isTTY: io.errIsTTY === true }, minIntervalMs);
}
