/**
 * `--clustermesh-config DIR`: Cilium's clustermesh configuration directory (issue 4). One
 * file per remote cluster, named after the cluster, holding its etcd config
 * (etcd-config.ts); in Kubernetes it is the `cilium-clustermesh` secret mounted as a volume,
 * so the files are symlinks through `..data` into a timestamped `..2024_01_01_...` directory
 * that is swapped atomically on update.
 *
 * Each valid config gets an EtcdClusterWatcher, which claims the cluster once it has read
 * its id. A file that goes away releases its cluster (via `config-dir`); a file whose
 * content (or TLS material) changes reconnects with the new config without a release, so
 * an unchanged id stays joined throughout.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import type { MembershipSink, MembershipSource } from '../membership-types';
import { looksLikeEtcdConfig, parseEtcdConfig, type EtcdConfig } from './etcd-config';
import { EtcdClusterWatcher } from './etcd-cluster';
import { SyncLatch } from './sync-latch';

/** Rescan period: the fallback for events fs.watch misses (network filesystems, a replaced directory). */
export const DEFAULT_RESCAN_MS = 2_000;

export interface ConfigDirSourceOptions {
  /** The directory, e.g. /var/lib/cilium/clustermesh. */
  readonly dir: string;
  readonly sink: MembershipSink;
  readonly log: Logger;
  /** Passed to each EtcdClusterWatcher: release after etcd is unreachable this long (default 5 min). */
  readonly graceMs?: number;
  /** Passed to each EtcdClusterWatcher: first-read timeout that still counts as synced (default 10 s). */
  readonly connectTimeoutMs?: number;
  /** Period of the full rescan (default 2 s). */
  readonly rescanMs?: number;
}

/** What one scan found under a name. */
type Entry =
  | { readonly kind: 'config'; readonly config: EtcdConfig }
  /** Not usable now (not a config, invalid, unreadable): whatever runs for the name keeps running. */
  | { readonly kind: 'skip' };

/**
 * The clustermesh MembershipSource of the daemon. `synced` once the directory has been read
 * and the watcher of every cluster found in that first read is synced; a missing directory
 * counts as read (no clusters), and one that disappears later releases its clusters as if
 * their files had been removed. A directory that exists but cannot be listed changes nothing.
 *
 * A missing directory is a warning, not an error: Cilium mounts the clustermesh secret as
 * optional, and a directory created after the daemon started (by a config manager, or a
 * first `cilium clustermesh connect`) must be picked up without a restart. The daemon would
 * otherwise crash-loop over a source that merely has no clusters yet.
 */
export class ConfigDirSource implements MembershipSource {
  private readonly dir: string;
  private readonly sink: MembershipSink;
  private readonly log: Logger;
  private readonly graceMs?: number;
  private readonly connectTimeoutMs?: number;
  private readonly rescanMs: number;

  /** The running watcher of each accepted file, with the fingerprint of the config it runs. */
  private readonly clusters = new Map<string, { fingerprint: string; watcher: EtcdClusterWatcher }>();
  /** Content fingerprint last logged as skipped, per name: each bad content is logged once, not every rescan. */
  private readonly skipLogged = new Map<string, string>();
  private fsWatcher: fs.FSWatcher | undefined;
  /** Inode of the directory fsWatcher watches: a directory replaced under the same path needs a new watch. */
  private watchedIno: number | undefined;
  private rescanTimer: NodeJS.Timeout | undefined;
  private scanning: Promise<void> | undefined;
  private rescanRequested = false;
  /** What the last scan found at `dir` (undefined before the first): only changes are logged. */
  private dirState: 'present' | 'missing' | 'unreadable' | undefined;
  /** Names found by the first successful read; synced waits for their watchers. */
  private initialNames: Set<string> | undefined;
  private readonly latch = new SyncLatch();
  private started = false;
  private stopping: Promise<void> | undefined;

  constructor(opts: ConfigDirSourceOptions) {
    this.dir = path.resolve(opts.dir);
    this.sink = opts.sink;
    this.log = opts.log.child({ source: 'clustermesh-config', dir: this.dir });
    this.graceMs = opts.graceMs;
    this.connectTimeoutMs = opts.connectTimeoutMs;
    this.rescanMs = opts.rescanMs ?? DEFAULT_RESCAN_MS;
  }

  get synced(): boolean {
    return this.latch.synced;
  }

  /** Resolves when `synced` becomes true; never resolves if stopped before that. */
  whenSynced(): Promise<void> {
    return this.latch.whenSynced();
  }

  /** Reads the directory once (starting a watcher per config found), then watches it. */
  async start(): Promise<void> {
    if (this.started || this.stopping !== undefined) return;
    this.started = true;
    this.requestScan();
    await this.scanning;
    if (this.stopping !== undefined) return;
    this.rescanTimer = setInterval(() => this.requestScan(), this.rescanMs);
  }

  /** Stops the directory watch, the rescans and every cluster's watcher. Releases nothing. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearInterval(this.rescanTimer);
      this.rescanTimer = undefined;
      this.closeFsWatch();
      await this.scanning;
      const watchers = [...this.clusters.values()].map((c) => c.watcher);
      this.clusters.clear();
      await Promise.all(watchers.map((w) => w.stop()));
    })();
    return this.stopping;
  }

  /** Runs a scan now, or once more after the one in progress (a burst of events costs two scans). */
  private requestScan(): void {
    if (this.stopping !== undefined) return;
    if (this.scanning !== undefined) {
      this.rescanRequested = true;
      return;
    }
    this.scanning = (async () => {
      do {
        this.rescanRequested = false;
        try {
          await this.scan();
        } catch (err) {
          this.log.error({ err }, 'clustermesh config scan failed');
        }
      } while (this.rescanRequested && this.stopping === undefined);
    })().finally(() => (this.scanning = undefined));
  }

  private async scan(): Promise<void> {
    const found = await this.readDir();
    if (found === undefined || this.stopping !== undefined) return;

    for (const name of [...this.clusters.keys()]) {
      if (!found.has(name)) await this.remove(name);
    }
    for (const name of [...this.skipLogged.keys()]) {
      if (!found.has(name)) this.skipLogged.delete(name);
    }
    for (const [name, entry] of found) {
      if (this.stopping !== undefined) return;
      if (entry.kind === 'config') await this.apply(name, entry.config);
    }
    if (this.initialNames === undefined) {
      this.initialNames = new Set(this.clusters.keys());
      this.log.info({ clusters: [...this.initialNames] }, 'clustermesh config directory read');
      this.checkSynced();
    }
  }

  /**
   * Every visible name in the directory and what it holds, or undefined when the directory
   * exists but cannot be listed (then nothing changes). A missing directory lists as empty.
   */
  private async readDir(): Promise<Map<string, Entry> | undefined> {
    let names: string[];
    try {
      names = await fs.promises.readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        if (this.dirState !== 'missing') this.log.warn('clustermesh config directory does not exist; no remote clusters until it appears');
        this.dirState = 'missing';
        this.closeFsWatch();
        return new Map();
      }
      if (this.dirState !== 'unreadable') this.log.warn({ err }, 'cannot list the clustermesh config directory; keeping the current clusters');
      this.dirState = 'unreadable';
      return undefined;
    }
    if (this.dirState !== undefined && this.dirState !== 'present') this.log.info('clustermesh config directory is readable again');
    this.dirState = 'present';
    await this.ensureFsWatch();

    const found = new Map<string, Entry>();
    for (const name of names.sort()) {
      // `.`-names: hidden files and the secret volume's `..data` / `..2024_...` entries,
      // whose files are reached through the per-key symlinks anyway.
      if (name.startsWith('.')) continue;
      const entry = await this.readEntry(name);
      if (entry !== undefined) found.set(name, entry);
    }
    return found;
  }

  /** What `name` holds; undefined when it is gone (or a dangling symlink): treated as removed. */
  private async readEntry(name: string): Promise<Entry | undefined> {
    const file = path.join(this.dir, name);
    let text: string;
    try {
      // readFile follows symlinks, as secret volumes need.
      text = await fs.promises.readFile(file, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return undefined;
      if (code === 'EISDIR') return this.skip(name, 'dir', 'debug', { file }, 'ignoring a directory in the clustermesh config directory');
      return this.skip(name, `err:${code}`, 'warn', { err, file }, 'cannot read a clustermesh config file; keeping its cluster as it is');
    }
    const textHash = createHash('sha256').update(text).digest('hex');
    if (!looksLikeEtcdConfig(text)) {
      return this.skip(name, textHash, 'debug', { file }, 'ignoring a file that is not an etcd config (no `endpoints:`)');
    }
    // Parsed on every scan: the TLS files it names can change while its text does not, and
    // the parse reads them into the fingerprint.
    try {
      return { kind: 'config', config: await parseEtcdConfig(file, text) };
    } catch (err) {
      return this.skip(name, textHash, 'warn', { err, file }, 'invalid clustermesh etcd config; keeping its cluster as it is');
    }
  }

  /**
   * A name that cannot be used now. Logged once per distinct content; the cluster (if it
   * runs) keeps running: a half-written file must not release a cluster and delete its CT
   * maps, and a fixed file is picked up by the next scan.
   */
  private skip(name: string, fingerprint: string, level: 'debug' | 'warn', fields: object, msg: string): Entry {
    if (this.skipLogged.get(name) !== fingerprint) {
      this.skipLogged.set(name, fingerprint);
      this.log[level]({ cluster: name, ...fields }, msg);
    }
    return { kind: 'skip' };
  }

  /** Starts a watcher for a new config, or replaces the watcher of a changed one. */
  private async apply(name: string, config: EtcdConfig): Promise<void> {
    this.skipLogged.delete(name);
    const current = this.clusters.get(name);
    if (current?.fingerprint === config.fingerprint) return;
    if (current !== undefined) {
      this.log.info({ cluster: name, endpoints: config.endpoints }, 'remote cluster config changed; reconnecting');
      // No release: the new watcher re-claims (same id: no leave), moves or releases the cluster.
      await current.watcher.stop();
    } else {
      this.log.info({ cluster: name, endpoints: config.endpoints }, 'remote cluster config added');
    }
    const watcher = new EtcdClusterWatcher({
      name,
      config,
      sink: this.sink,
      log: this.log,
      graceMs: this.graceMs,
      connectTimeoutMs: this.connectTimeoutMs,
    });
    this.clusters.set(name, { fingerprint: config.fingerprint, watcher });
    void watcher.whenSynced().then(() => this.checkSynced());
    await watcher.start();
  }

  /** The file is gone: stop following the cluster's etcd and drop our claim. */
  private async remove(name: string): Promise<void> {
    const current = this.clusters.get(name);
    if (current === undefined) return;
    this.clusters.delete(name);
    this.log.info({ cluster: name }, 'remote cluster config removed; releasing the cluster');
    // Stop first: the watcher's own sink calls are done when stop() resolves, so the release
    // cannot be overtaken by a claim still in flight.
    await current.watcher.stop();
    try {
      await this.sink.release('clustermesh', name, 'config-dir');
    } catch (err) {
      this.log.error({ err, cluster: name }, 'the membership sink failed to release the remote cluster');
    }
    this.checkSynced();
  }

  private checkSynced(): void {
    if (this.latch.synced || this.initialNames === undefined) return;
    for (const name of this.initialNames) {
      const current = this.clusters.get(name);
      if (current !== undefined && !current.watcher.synced) return;
    }
    this.latch.set();
    this.log.info('clustermesh config synced');
  }

  /** Watches the directory for changes (a rescan per event burst); re-watches a replaced directory. */
  private async ensureFsWatch(): Promise<void> {
    let ino: number;
    try {
      ino = (await fs.promises.stat(this.dir)).ino;
    } catch {
      return; // gone again: the next scan sees it
    }
    if (this.stopping !== undefined) return;
    if (this.fsWatcher !== undefined && this.watchedIno === ino) return;
    this.closeFsWatch();
    try {
      this.fsWatcher = fs.watch(this.dir, { persistent: true }, () => this.requestScan());
    } catch (err) {
      this.log.warn({ err }, 'cannot watch the clustermesh config directory; relying on the periodic rescan');
      return;
    }
    this.watchedIno = ino;
    this.fsWatcher.on('error', (err) => {
      this.log.debug({ err }, 'clustermesh config directory watch failed; relying on the periodic rescan');
      this.closeFsWatch();
    });
  }

  private closeFsWatch(): void {
    this.fsWatcher?.close();
    this.fsWatcher = undefined;
    this.watchedIno = undefined;
  }
}
