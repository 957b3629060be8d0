/**
 * Follows one remote cluster's etcd (Cilium clustermesh, issue 4): reads the key Cilium's
 * clustermesh-apiserver writes, `cilium/cluster-config/<name>` (JSON
 * `{"id": 7, "capabilities": {...}}`), watches it, and turns what it sees into claims of
 * owner `clustermesh` on a MembershipSink.
 *
 * Connections are sessions: a fresh etcd3 client reads the key, then watches it from the
 * revision right after that read, so no change between the read and the watch is missed or
 * seen twice. When the watch breaks, the session ends and the next one starts with a fresh
 * read after a backoff. That is simpler to reason about than etcd3's own watch resumption:
 * every reconnect re-reads the current value, which is what has to be re-claimed after the
 * grace period released it, and each session's client (its circuit breaker included) starts
 * clean.
 */
import { Etcd3, type IKeyValue, type IOptions, type Watcher } from 'etcd3';
import type { Logger } from 'pino';
import { CtmapError, invalidArgument, quote } from '../../errors';
import type { MembershipSink, MembershipSource } from '../membership-types';
import type { EtcdConfig } from './etcd-config';
import { SyncLatch } from './sync-latch';

/** How long a cluster stays claimed while its etcd cannot be reached. */
export const DEFAULT_GRACE_MS = 5 * 60_000;
/** How long the first read may take before the watcher counts as synced anyway. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** First delay between two sessions; doubles on each failure up to maxRetryDelay(). */
const RETRY_MIN_MS = 100;
const RETRY_MAX_MS = 5_000;
/** How long stop() waits for etcd to confirm a watch cancel before closing the client anyway. */
const CANCEL_TIMEOUT_MS = 1_000;

/**
 * gRPC keepalive on the etcd channel: a silently dropped connection (no RST) is noticed
 * within ~40 s, well inside the grace period. etcd refuses pings more often than every 5 s
 * (`--grpc-keepalive-min-time`) and, by default, pings without an open stream.
 */
const GRPC_OPTIONS = {
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 0,
};

/** The etcd key holding cluster `name`'s CiliumClusterConfig. */
export function clusterConfigKey(name: string): string {
  return `cilium/cluster-config/${name}`;
}

/** The part of Cilium's CiliumClusterConfig that membership needs. */
export interface ClusterConfig {
  readonly id: number;
}

/**
 * Parses a `cilium/cluster-config/<name>` value. Throws CtmapError `invalid-argument` when
 * it is not a JSON object or its `id` is not an integer >= 1 (field `id`). The upper bound
 * (255 or 511, `--max-connected-clusters`) is the sink's to enforce.
 */
export function parseClusterConfig(value: string): ClusterConfig {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch (err) {
    throw new CtmapError('invalid-argument', `value: not JSON: ${(err as Error).message}`, { field: 'value', cause: err });
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw invalidArgument('value', 'must be a JSON object like {"id": 7}');
  }
  const id = (parsed as { id?: unknown }).id;
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 1) {
    throw invalidArgument('id', `must be an integer >= 1, got ${id === undefined ? 'nothing' : quote(id)}`);
  }
  return { id };
}

export interface EtcdClusterWatcherOptions {
  /** The remote cluster's name: the key read is `cilium/cluster-config/<name>`. */
  readonly name: string;
  readonly config: EtcdConfig;
  readonly sink: MembershipSink;
  readonly log: Logger;
  /** Release the claim after etcd has been unreachable this long (default 5 min). */
  readonly graceMs?: number;
  /** Count as synced after this long without a first read; also the deadline of each read (default 10 s). */
  readonly connectTimeoutMs?: number;
}

/**
 * Claims and releases one remote cluster from its etcd (see the file comment). Implements
 * MembershipSource: `synced` once the first read has been reported to the sink (or failed
 * for connectTimeoutMs). Sink calls are made one at a time, in the order etcd reported the
 * changes; a rejected claim is logged and changes nothing.
 *
 * Every read and every change is passed on as it is, relying on the sink's idempotency:
 * each (re)connect claims the id again (the sink recreates maps removed behind its back)
 * and an absent key releases even a cluster this watcher never claimed. So a watcher that
 * replaces another one for the same cluster (a changed config file) needs no hand-over: the
 * same id is re-claimed without a leave, another id moves the cluster, no key releases it.
 */
export class EtcdClusterWatcher implements MembershipSource {
  readonly name: string;
  private readonly config: EtcdConfig;
  private readonly sink: MembershipSink;
  private readonly log: Logger;
  private readonly key: string;
  private readonly graceMs: number;
  private readonly connectTimeoutMs: number;
  private readonly stopSignal = new AbortController();

  /** The id our last accepted claim named (for log lines: what a bad value leaves in place). */
  private claimed: number | undefined;
  /** Sink calls, chained so they happen in etcd's order and stop() can wait for them. */
  private sinkQueue: Promise<void> = Promise.resolve();
  private loop: Promise<void> | undefined;
  private graceTimer: NodeJS.Timeout | undefined;
  private connectTimer: NodeJS.Timeout | undefined;
  private readonly latch = new SyncLatch();
  private stopping: Promise<void> | undefined;

  constructor(opts: EtcdClusterWatcherOptions) {
    this.name = opts.name;
    this.config = opts.config;
    this.sink = opts.sink;
    this.key = clusterConfigKey(opts.name);
    this.log = opts.log.child({ cluster: opts.name, etcd: opts.config.endpoints });
    this.graceMs = opts.graceMs ?? DEFAULT_GRACE_MS;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  }

  get synced(): boolean {
    return this.latch.synced;
  }

  /** Resolves when `synced` becomes true; never resolves if stopped before that. */
  whenSynced(): Promise<void> {
    return this.latch.whenSynced();
  }

  /** Starts the session loop; resolves at once (the first read happens in the background). */
  async start(): Promise<void> {
    if (this.loop !== undefined || this.stopping !== undefined) return;
    this.connectTimer = setTimeout(() => {
      this.connectTimer = undefined;
      this.log.warn({ timeoutMs: this.connectTimeoutMs }, 'remote cluster etcd did not answer within the connect timeout; counting it as synced');
      this.markSynced();
    }, this.connectTimeoutMs);
    // Unreachable from the start counts as lost: the claim a replaced watcher made for this
    // cluster must not outlive an etcd that never answers.
    this.startGrace();
    this.loop = this.run();
  }

  /** Ends the session, its watch and client, and every timer; waits for sink calls in flight. Releases nothing. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.stopSignal.abort();
      clearTimeout(this.connectTimer);
      clearTimeout(this.graceTimer);
      this.connectTimer = this.graceTimer = undefined;
      await this.loop;
      await this.sinkQueue;
    })();
    return this.stopping;
  }

  private async run(): Promise<void> {
    const signal = this.stopSignal.signal;
    let delay = RETRY_MIN_MS;
    let failures = 0;
    while (!signal.aborted) {
      const { connected, err } = await this.session();
      if (signal.aborted) break;
      this.startGrace();
      if (connected) {
        delay = RETRY_MIN_MS;
        failures = 0;
        this.log.warn({ err, graceMs: this.graceMs }, 'lost the remote cluster etcd; reconnecting');
      } else {
        failures++;
        // One warning per outage; the retries after it would only repeat it.
        if (failures === 1) this.log.warn({ err }, 'cannot reach the remote cluster etcd; retrying');
        else this.log.debug({ err, failures }, 'remote cluster etcd still unreachable');
      }
      await sleep(delay, signal);
      delay = Math.min(delay * 2, this.maxRetryDelay());
    }
  }

  /**
   * Retries happen at least four times per grace period, so an etcd that comes back inside
   * the grace period is found before the claim is released.
   */
  private maxRetryDelay(): number {
    return Math.max(RETRY_MIN_MS, Math.min(RETRY_MAX_MS, Math.floor(this.graceMs / 4)));
  }

  /**
   * One connection: read, report, watch until the watch breaks or stop() is called.
   * `connected` says whether the read succeeded; `err` is why the session ended.
   */
  private async session(): Promise<{ connected: boolean; err?: unknown }> {
    const signal = this.stopSignal.signal;
    const client = new Etcd3(this.clientOptions());
    let watcher: Watcher | undefined;
    let cancelled = false;
    try {
      const read = client.get(this.key).options({ deadline: Date.now() + this.connectTimeoutMs }).exec();
      const res = await untilAborted(read, signal);
      if (res === undefined) return { connected: false };
      this.stopGrace();
      this.log.info({ revision: res.header.revision }, 'connected to the remote cluster etcd');
      this.report(res.kvs[0], 'initial read');
      if (!this.latch.synced) void this.enqueue(async () => this.markSynced());

      // `watcher()` rather than `create()`: create() only resolves once etcd confirms the
      // watch, and a watch that never gets confirmed could then not be cancelled.
      watcher = client
        .watch()
        .key(this.key)
        .startRevision((BigInt(res.header.revision) + 1n).toString())
        .watcher();
      const w = watcher;
      const ended = new Promise<unknown>((resolve) => {
        w.on('put', (kv: IKeyValue) => this.report(kv, 'watch'));
        w.on('delete', () => this.report(undefined, 'watch'));
        w.on('disconnected', resolve);
        w.on('error', (err) => {
          // etcd cancelled the watch (e.g. its start revision was compacted) and etcd3 has
          // dropped it already; a new session re-reads.
          cancelled = true;
          resolve(err);
        });
      });
      return { connected: true, err: await untilAborted(ended, signal) };
    } catch (err) {
      return { connected: false, err };
    } finally {
      if (watcher !== undefined && !cancelled) await cancelWatch(watcher);
      client.close();
    }
  }

  private clientOptions(): IOptions {
    const tls = this.config.tls;
    return {
      hosts: [...this.config.endpoints],
      grpcOptions: GRPC_OPTIONS,
      ...(tls && {
        credentials: {
          // grpc-js's createSsl takes null for "the system roots"; etcd3's type says Buffer
          // only because it always expects a CA, which Cilium's files do not require.
          rootCertificate: tls.ca ?? (null as unknown as Buffer),
          privateKey: tls.key,
          certChain: tls.cert,
        },
      }),
    };
  }

  /** Queues the sink call for a value of the key (`undefined`: the key does not exist). */
  private report(kv: IKeyValue | undefined, via: 'initial read' | 'watch'): void {
    if (kv === undefined) {
      void this.enqueue(() => this.release(`key ${this.key} does not exist (${via})`));
      return;
    }
    let config: ClusterConfig;
    try {
      config = parseClusterConfig(kv.value.toString('utf8'));
    } catch (err) {
      // A bad value says nothing about the cluster's id, so the last valid claim stays:
      // releasing would delete the cluster's CT maps (and the state of every live
      // cross-cluster connection) over what is most likely a bad write that the
      // clustermesh-apiserver will overwrite. Deletion or a valid value settles it.
      this.log.warn({ err, key: this.key, revision: kv.mod_revision, keptId: this.claimed }, 'ignoring a malformed cluster config in etcd');
      return;
    }
    void this.enqueue(() => this.claim(config.id));
  }

  private async claim(id: number): Promise<void> {
    try {
      await this.sink.claim('clustermesh', this.name, id, 'etcd');
      // A re-claim of the same id (each reconnect) is not news.
      this.log[this.claimed === id ? 'debug' : 'info']({ id, previousId: this.claimed }, 'claimed remote cluster');
      this.claimed = id;
    } catch (err) {
      // The sink did not record it (e.g. id above --max-connected-clusters): the last claim stays.
      this.log.warn({ err, id, keptId: this.claimed }, 'the membership sink rejected the remote cluster id');
    }
  }

  private async release(why: string): Promise<void> {
    try {
      await this.sink.release('clustermesh', this.name, 'etcd');
      this.log[this.claimed === undefined ? 'debug' : 'info']({ id: this.claimed, why }, 'released remote cluster');
      this.claimed = undefined;
    } catch (err) {
      this.log.error({ err, id: this.claimed, why }, 'the membership sink failed to release the remote cluster');
    }
  }

  private enqueue(task: () => Promise<void>): Promise<void> {
    // The tasks catch their own errors; the catch only keeps the chain alive if one did not.
    this.sinkQueue = this.sinkQueue.then(task).catch((err: unknown) => this.log.error({ err }, 'membership update failed'));
    return this.sinkQueue;
  }

  private markSynced(): void {
    clearTimeout(this.connectTimer);
    this.connectTimer = undefined;
    this.latch.set();
  }

  private startGrace(): void {
    if (this.graceTimer !== undefined || this.stopSignal.signal.aborted) return;
    this.graceTimer = setTimeout(() => {
      this.graceTimer = undefined;
      void this.enqueue(() => this.release(`etcd unreachable for ${this.graceMs} ms`));
    }, this.graceMs);
  }

  private stopGrace(): void {
    clearTimeout(this.graceTimer);
    this.graceTimer = undefined;
  }
}

/**
 * Detaches a watch from its client so that closing the client leaves nothing behind (a
 * watch still attached would make etcd3 retry it forever on the closed client). Waits at
 * most CANCEL_TIMEOUT_MS for etcd to confirm.
 */
async function cancelWatch(watcher: Watcher): Promise<void> {
  // No more reports from a watch being torn down; its 'error' listener stays, because an
  // EventEmitter without one would throw an error etcd3 emits while the cancel is in flight.
  watcher.removeAllListeners('put').removeAllListeners('delete');
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    watcher.cancel().catch(() => undefined),
    new Promise<void>((resolve) => (timer = setTimeout(resolve, CANCEL_TIMEOUT_MS))),
  ]);
  clearTimeout(timer);
}

/** `p`'s outcome, or undefined as soon as `signal` aborts (a later rejection of `p` is then ignored). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal): Promise<T | undefined> {
  return new Promise<T | undefined>((resolve, reject) => {
    const onAbort = (): void => {
      p.catch(() => undefined);
      resolve(undefined);
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** Waits `ms`, or less if `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}
