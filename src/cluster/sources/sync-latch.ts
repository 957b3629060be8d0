/**
 * The `synced` / `whenSynced()` half of a MembershipSource: a flag that turns true once
 * and a promise that resolves with it.
 */
export class SyncLatch {
  #synced = false;
  #resolve!: () => void;
  readonly #promise = new Promise<void>((resolve) => (this.#resolve = resolve));

  get synced(): boolean {
    return this.#synced;
  }

  /** Resolves when `synced` becomes true; never resolves if that never happens. */
  whenSynced(): Promise<void> {
    return this.#promise;
  }

  /** Sets `synced` (idempotent). */
  set(): void {
    if (this.#synced) return;
    this.#synced = true;
    this.#resolve();
  }
}
