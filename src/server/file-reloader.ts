/**
 * Files that are reloaded when they change on disk: the TLS certificate, key and CA files
 * and the authz policy (issue 12: rotation without restart). Contents are re-read every
 * interval and compared, not mtimes: a rewrite within one mtime tick and a Kubernetes
 * secret's symlink swap are both seen, and a few small files a second cost nothing.
 */
import * as fs from 'node:fs';
import type { Logger } from 'pino';
import { CtmapError } from '../errors';

/** How often reloaded files are re-read unless told otherwise. */
export const DEFAULT_RELOAD_INTERVAL_MS = 1000;

export interface FileReloaderOptions<T> {
  /** The files, read together; `parse` gets their contents in this order. */
  readonly paths: readonly string[];
  /** The flag of each path, named when it cannot be read ("--tls-key-file"). */
  readonly flags: readonly string[];
  /** Validates and converts; throws (any Error) to reject a set of contents. */
  readonly parse: (contents: Buffer[]) => T;
  /** Names what is loaded in log lines ("tls certificates", "--authz-policy"). */
  readonly what: string;
  /** Fields logged when a new value is taken. */
  readonly describe?: (value: T) => Record<string, unknown>;
  readonly log: Logger;
  readonly intervalMs?: number;
}

/**
 * Holds the current value parsed from `paths`. The constructor reads and parses them
 * synchronously and throws CtmapError failed-precondition (naming `what` and the
 * problem) when that fails: a start with unusable files fails. Afterwards, contents that
 * changed are parsed and, when valid, become current and are passed to the listeners;
 * invalid ones (a rotation caught halfway, a typo) are logged once at warn and the
 * current value stays. close() stops the timer; the timer never holds the process open.
 */
export class FileReloader<T> {
  #current: T;
  #seen: Buffer[];
  #timer: NodeJS.Timeout | undefined;
  #reading = false;
  readonly #listeners = new Set<(value: T) => void>();

  constructor(private readonly opts: FileReloaderOptions<T>) {
    let contents: Buffer[];
    try {
      contents = opts.paths.map((p, i) => {
        try {
          return fs.readFileSync(p);
        } catch (err) {
          throw this.#unreadable(i, err as NodeJS.ErrnoException);
        }
      });
      this.#current = opts.parse(contents);
    } catch (err) {
      throw new CtmapError('failed-precondition', `${opts.what}: ${(err as Error).message}`, { cause: err });
    }
    this.#seen = contents;
    this.#timer = setInterval(() => void this.#poll(), opts.intervalMs ?? DEFAULT_RELOAD_INTERVAL_MS);
    this.#timer.unref();
  }

  get current(): T {
    return this.#current;
  }

  /** Calls `listener` with every value taken from now on; returns the unsubscribe. */
  onChange(listener: (value: T) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  close(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#listeners.clear();
  }

  #unreadable(i: number, err: NodeJS.ErrnoException): NodeJS.ErrnoException {
    return Object.assign(new Error(`${this.opts.flags[i]} ${this.opts.paths[i]}: cannot read: ${err.code ?? err.message}`, { cause: err }), { code: err.code });
  }

  async #poll(): Promise<void> {
    if (this.#reading) return;
    this.#reading = true;
    try {
      const read = await Promise.all(this.opts.paths.map((p, i) => fs.promises.readFile(p).catch((err: NodeJS.ErrnoException) => this.#unreadable(i, err))));
      if (this.#timer === undefined) return;
      // A failed read is remembered by its error code, so a missing file is reported once.
      const seen = read.map((c) => (Buffer.isBuffer(c) ? c : Buffer.from(`\0${c.code ?? c.message}`)));
      if (seen.every((c, i) => c.equals(this.#seen[i]!))) return;
      this.#seen = seen;
      const failed = read.find((c): c is NodeJS.ErrnoException => !Buffer.isBuffer(c));
      if (failed) throw failed;
      const contents = read as Buffer[];
      const value = this.opts.parse(contents);
      this.#current = value;
      this.opts.log.info({ ...this.opts.describe?.(value) }, `${this.opts.what}: reloaded`);
      for (const l of this.#listeners) l(value);
    } catch (err) {
      this.opts.log.warn({ err }, `${this.opts.what}: new contents rejected, keeping the current ones: ${(err as Error).message}`);
    } finally {
      this.#reading = false;
    }
  }
}
