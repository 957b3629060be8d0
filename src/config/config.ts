/**
 * ctmapd's command-line flags. Names mirror Cilium's agent flags where Cilium has one, so
 * operators can carry values over. Every flag also reads `CTMAPD_<FLAG_IN_UPPER_SNAKE>`;
 * precedence is flag > environment > default. Values from both sources go through the
 * same validation, and every error names the flag.
 */
import { Command, CommanderError, Option } from 'commander';
import { UsageError } from '../errors';
import { parseDurationSeconds } from './duration';
import {
  CLUSTER_ID_MAX_VALUES,
  CT_TIMEOUT_DEFAULTS as CT,
  DEFAULT_BPF_ROOT,
  DEFAULT_CLUSTER_ID_MAX,
  CT_EVENTS_MODES,
  CtEventsMode,
  DEFAULT_CT_ANY_MAX,
  DEFAULT_CT_EVENTS,
  DEFAULT_CT_EVENTS_RING_SIZE,
  DEFAULT_CT_EVENTS_BUFFER,
  DEFAULT_CT_FILL_UP_SHARE,
  DEFAULT_CT_TCP_MAX,
  DEFAULT_MONITOR_AGGREGATION_INTERVAL,
  DEFAULT_SOCKET,
  DEFAULT_SOCKET_READONLY_MODE,
  GC_MAX_INTERVAL_SECONDS,
  GC_MIN_INTERVAL_SECONDS,
  MAP_SIZE_MAX,
  MAP_SIZE_MIN,
} from './defaults';

export { MAP_SIZE_MAX, MAP_SIZE_MIN } from './defaults';

export type BackendChoice = 'auto' | 'kernel' | 'memory';
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal';
export type LogFormat = 'json' | 'pretty';

/** The validated configuration; one field per flag, named after it in camelCase. */
export interface Config {
  readonly backend: BackendChoice;
  readonly bpfRoot: string;
  /** Unix socket path the gRPC server listens on. */
  readonly socket: string;
  /** TCP "HOST:PORT" to listen on as well (TLS with client certificates unless
   *  listenInsecure); undefined = unix socket only. */
  readonly listen?: string;
  /** Serve `listen` in plaintext, unauthenticated, with full access (warned at every start). */
  readonly listenInsecure: boolean;
  /** PEM certificate (chain) and key of the TCP listener; reloaded when they change on disk. */
  readonly tlsCertFile?: string;
  readonly tlsKeyFile?: string;
  /** PEM CA files a client certificate must chain to; reloaded when they change on disk. */
  readonly tlsClientCaFiles?: readonly string[];
  /** YAML `{readers: [...], writers: [...]}` of TLS client identities; undefined = every
   *  verified client may write. */
  readonly authzPolicy?: string;
  /** A second unix socket that serves the read RPCs only; undefined = none. */
  readonly socketReadonly?: string;
  /** Mode of socketReadonly; undefined = DEFAULT_SOCKET_READONLY_MODE (0660). */
  readonly socketReadonlyMode?: number;
  /** Group of socketReadonly: a gid, or a name looked up in /etc/group; undefined = the daemon's. */
  readonly socketReadonlyGroup?: number | string;
  readonly enableIpv4: boolean;
  readonly enableIpv6: boolean;
  readonly bpfCtGlobalTcpMax: number;
  readonly bpfCtGlobalAnyMax: number;
  readonly bpfDistributedLru: boolean;
  /** Replace (emptied) pinned maps whose key/value layout changed instead of refusing to start. */
  readonly allowMapRecreate: boolean;
  /** Max entries of the SNAT maps; undefined = Cilium's default, 2/3 of the CT maps (natGlobalMax). */
  readonly bpfNatGlobalMax?: number;
  /** Fixed GC interval in seconds; undefined = adaptive (facts §6). */
  readonly conntrackGcInterval?: number;
  /** Upper bound of the adaptive GC interval in seconds; undefined = 12 h. */
  readonly conntrackGcMaxInterval?: number;
  /** HOST:PORT of the Prometheus /metrics endpoint; undefined = off. */
  readonly metricsListen?: string;
  /** ClusterIDMax: 255 or 511. */
  readonly maxConnectedClusters: number;
  /** Cilium's clustermesh config directory (one etcd config per remote cluster); undefined = off. */
  readonly clustermeshConfig?: string;
  /** Seconds the reconcile waits, after every source has synced, before removing unclaimed cluster maps. */
  readonly clustermeshReconcileGrace: number;
  /** Seconds a remote cluster's etcd may be unreachable before the cluster leaves. */
  readonly clustermeshEtcdGrace: number;
  /** CT lifetimes in seconds (facts §5; become the datapath's CT_* constants). */
  readonly bpfCtTimeoutRegularTcp: number;
  readonly bpfCtTimeoutRegularAny: number;
  readonly bpfCtTimeoutServiceTcp: number;
  readonly bpfCtTimeoutServiceAny: number;
  readonly bpfCtTimeoutServiceTcpGrace: number;
  readonly bpfCtTimeoutRegularTcpSyn: number;
  readonly bpfCtTimeoutRegularTcpFin: number;
  /** CT_REPORT_INTERVAL in seconds. */
  readonly monitorAggregationInterval: number;
  /** What the datapath sends the daemon through its ring buffer (bpf/ct_events.h). */
  readonly ctEvents: CtEventsMode;
  /** Percent of a CT map's size that, created since the family's last GC pass, raises a fill-up signal. */
  readonly ctFillUpShare: number;
  /** Bytes of the ctmapd_ct_events ring buffer: a power of two, at least a page. */
  readonly ctEventsRingSize: number;
  readonly ctEventsBuffer: number;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
}

/**
 * A configuration problem (exitCode 2, `field` = the flag) or a request for help
 * (exitCode 0, `message` = the help text to print on stdout).
 */
export class ConfigError extends UsageError {
  override name = 'ConfigError';
}

const U32_MAX = 0xffff_ffff;
// sun_path is 108 bytes including the terminating NUL.
const SOCKET_PATH_MAX = 107;

type Raw = string | boolean;
type Parse = (raw: Raw) => unknown;

interface Flag {
  readonly name: string; // long flag without "--"
  readonly key: keyof Config;
  readonly help: string;
  /** undefined = optional, left unset when not given. */
  readonly default?: string | number | boolean;
  readonly value: 'required' | 'bool';
  readonly parse: Parse;
}

const FLAGS: readonly Flag[] = [
  flag('backend', 'backend', 'map backend: auto picks kernel where bpf() is permitted, else memory', 'auto', oneOf(['auto', 'kernel', 'memory'])),
  flag('bpf-root', 'bpfRoot', 'bpffs mount point; maps are pinned under <bpf-root>/tc/globals', DEFAULT_BPF_ROOT, absolutePath),
  flag('socket', 'socket', 'unix socket path of the gRPC server', DEFAULT_SOCKET, socketPath),
  flag('listen', 'listen', 'also listen on TCP HOST:PORT, with TLS and client certificates (--tls-cert-file, --tls-key-file, --tls-client-ca-files) unless --listen-insecure (off by default)', undefined, hostPort),
  boolFlag('listen-insecure', 'listenInsecure', 'serve --listen in plaintext with no authentication: anyone who reaches it may read and write every map (logged as a warning at every start)', false),
  flag('tls-cert-file', 'tlsCertFile', 'PEM certificate (chain) of the --listen TLS server; reloaded when it changes', undefined, absolutePath),
  flag('tls-key-file', 'tlsKeyFile', 'PEM private key of --tls-cert-file; reloaded when it changes', undefined, absolutePath),
  flag('tls-client-ca-files', 'tlsClientCaFiles', 'comma-separated PEM CA files; a --listen client must present a certificate that chains to one of them; reloaded when they change', undefined, pathList),
  flag('authz-policy', 'authzPolicy', 'YAML file {readers: [...], writers: [...]} of TLS client identities (SAN URI, DNS name or CN=<name>); without it every verified client may write; reloaded when it changes', undefined, absolutePath),
  flag('socket-readonly', 'socketReadonly', 'a second unix socket that serves the read RPCs only (off by default)', undefined, socketPath),
  flag('socket-readonly-mode', 'socketReadonlyMode', `mode of --socket-readonly, octal (default: 0${DEFAULT_SOCKET_READONLY_MODE.toString(8)})`, undefined, octalMode),
  flag('socket-readonly-group', 'socketReadonlyGroup', "group of --socket-readonly: a name (from /etc/group) or a gid (default: the daemon's)", undefined, group),
  boolFlag('enable-ipv4', 'enableIpv4', 'manage the IPv4 CT maps', true),
  boolFlag('enable-ipv6', 'enableIpv6', 'manage the IPv6 CT maps', true),
  flag('bpf-ct-global-tcp-max', 'bpfCtGlobalTcpMax', 'max entries of the TCP CT maps', DEFAULT_CT_TCP_MAX, integer(MAP_SIZE_MIN, MAP_SIZE_MAX)),
  flag('bpf-ct-global-any-max', 'bpfCtGlobalAnyMax', 'max entries of the non-TCP CT maps', DEFAULT_CT_ANY_MAX, integer(MAP_SIZE_MIN, MAP_SIZE_MAX)),
  boolFlag('bpf-distributed-lru', 'bpfDistributedLru', 'create LRU maps with BPF_F_NO_COMMON_LRU (per-CPU LRU lists)', false),
  boolFlag(
    'allow-map-recreate',
    'allowMapRecreate',
    'when a pinned map has another key or value size (or type) than configured, which migration cannot carry over, drop its entries and recreate it instead of refusing to start',
    false,
  ),
  flag('bpf-nat-global-max', 'bpfNatGlobalMax', 'max entries of the SNAT maps (default: 2/3 of tcp-max + any-max)', undefined, integer(MAP_SIZE_MIN, MAP_SIZE_MAX)),
  seconds('conntrack-gc-interval', 'conntrackGcInterval', `fixed interval between CT GC passes (default: adaptive, ${GC_MIN_INTERVAL_SECONDS} s .. ${GC_MAX_INTERVAL_SECONDS / 3600} h)`, undefined),
  seconds('conntrack-gc-max-interval', 'conntrackGcMaxInterval', `upper bound of the adaptive CT GC interval (default: ${GC_MAX_INTERVAL_SECONDS / 3600} h)`, undefined, GC_MIN_INTERVAL_SECONDS),
  flag('metrics-listen', 'metricsListen', 'serve Prometheus metrics on HOST:PORT /metrics (off by default)', undefined, hostPort),
  flag('max-connected-clusters', 'maxConnectedClusters', 'ClusterIDMax: 255 or 511 (sizes the per-cluster outer maps)', DEFAULT_CLUSTER_ID_MAX, oneOfIntegers(CLUSTER_ID_MAX_VALUES)),
  flag('clustermesh-config', 'clustermeshConfig', 'clustermesh config directory: one etcd config file per remote cluster, named after it (off by default)', undefined, absolutePath),
  seconds('clustermesh-reconcile-grace', 'clustermeshReconcileGrace', 'after every clustermesh source has synced, wait this long before removing per-cluster maps no source claims', 600),
  seconds('clustermesh-etcd-grace', 'clustermeshEtcdGrace', "how long a remote cluster's etcd may be unreachable before the cluster leaves", 300),
  seconds('bpf-ct-timeout-regular-tcp', 'bpfCtTimeoutRegularTcp', 'lifetime of established TCP entries', CT.regularTcp),
  seconds('bpf-ct-timeout-regular-any', 'bpfCtTimeoutRegularAny', 'lifetime of non-TCP entries', CT.regularAny),
  seconds('bpf-ct-timeout-service-tcp', 'bpfCtTimeoutServiceTcp', 'lifetime of TCP service entries', CT.serviceTcp),
  seconds('bpf-ct-timeout-service-any', 'bpfCtTimeoutServiceAny', 'lifetime of non-TCP service entries', CT.serviceAny),
  seconds('bpf-ct-timeout-service-tcp-grace', 'bpfCtTimeoutServiceTcpGrace', 'grace period before a closing TCP service connection is rebalanced', CT.serviceTcpGrace),
  seconds('bpf-ct-timeout-regular-tcp-syn', 'bpfCtTimeoutRegularTcpSyn', 'lifetime of TCP entries that have only seen a SYN', CT.regularTcpSyn),
  seconds('bpf-ct-timeout-regular-tcp-fin', 'bpfCtTimeoutRegularTcpFin', 'lifetime of closing TCP entries', CT.regularTcpFin),
  flag(
    'ct-events',
    'ctEvents',
    'what the datapath tells the daemon: none; signals (a map filling up starts an early GC pass); all (signals, and NEW/CLOSE events of every entry)',
    DEFAULT_CT_EVENTS,
    oneOf(CT_EVENTS_MODES),
  ),
  flag('ct-fill-up-share', 'ctFillUpShare', 'percent of a CT map created since its last GC pass that signals the map is filling up (1..100)', DEFAULT_CT_FILL_UP_SHARE, integer(1, 100)),
  flag('ct-events-ring-size', 'ctEventsRingSize', 'bytes of the datapath event ring buffer (a power of two, 4096 .. 1 GiB)', DEFAULT_CT_EVENTS_RING_SIZE, powerOfTwo(4096, 1 << 30)),
  flag('ct-events-buffer', 'ctEventsBuffer', 'CT lifecycle events buffered per CTEvents subscriber before it loses some (and is told how many)', DEFAULT_CT_EVENTS_BUFFER, integer(1, 1 << 24)),
  seconds('monitor-aggregation-interval', 'monitorAggregationInterval', 'minimum interval between monitor reports of one connection', DEFAULT_MONITOR_AGGREGATION_INTERVAL),
  flag('log-level', 'logLevel', 'trace, debug, info, warn, error or fatal', 'info', oneOf(['trace', 'debug', 'info', 'warn', 'error', 'fatal'])),
  flag('log-format', 'logFormat', 'json, or pretty for one human-readable line per record', 'json', oneOf(['json', 'pretty'])),
];

/** SNAT map size: the flag, or Cilium's default of 2/3 of the CT maps (524288 for the defaults), within bounds. */
export function natGlobalMax(config: Pick<Config, 'bpfNatGlobalMax' | 'bpfCtGlobalTcpMax' | 'bpfCtGlobalAnyMax'>): number {
  if (config.bpfNatGlobalMax !== undefined) return config.bpfNatGlobalMax;
  const derived = Math.floor(((config.bpfCtGlobalTcpMax + config.bpfCtGlobalAnyMax) * 2) / 3);
  return Math.min(MAP_SIZE_MAX, Math.max(MAP_SIZE_MIN, derived));
}

/** `--bpf-ct-global-tcp-max` -> `CTMAPD_BPF_CT_GLOBAL_TCP_MAX`. */
export function envName(flagName: string): string {
  return `CTMAPD_${flagName.replace(/^--/, '').replace(/-/g, '_').toUpperCase()}`;
}

/**
 * Parses the arguments after the program name (process.argv.slice(2)) with `env` as the
 * fallback for flags not given. Returns the validated Config; throws ConfigError: exitCode
 * 2 for unknown flags, missing or invalid values (the message names the flag), exitCode 0
 * with the help text for --help. Never prints and never exits.
 */
export function parseConfig(argv: readonly string[], env: NodeJS.ProcessEnv): Config {
  let helpText = '';
  const cmd = new Command('ctmapd')
    .description('Node-local gRPC daemon owning the eBPF connection-tracking maps (Cilium layout).')
    .helpOption('-h, --help', 'show this help')
    .exitOverride()
    .configureOutput({ writeOut: (s) => (helpText += s), writeErr: () => undefined });
  for (const f of FLAGS) {
    const given = f.default === undefined ? '' : ` (default: ${f.default})`;
    const help = `${f.help}${given} [env ${envName(f.name)}]`;
    if (f.value === 'bool') {
      cmd.addOption(new Option(`--${f.name} [bool]`, help));
      cmd.addOption(new Option(`--no-${f.name}`, `same as --${f.name}=false`));
    } else {
      cmd.addOption(new Option(`--${f.name} <value>`, help));
    }
  }
  try {
    cmd.parse([...argv], { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.exitCode === 0) throw new ConfigError(helpText, 0);
      throw new ConfigError(err.message.replace(/^error: /, ''), 2, optionIn(err.message));
    }
    throw err;
  }

  const opts = cmd.opts<Record<string, Raw | undefined>>();
  const out: Record<string, unknown> = {};
  for (const f of FLAGS) {
    const fromCli = opts[f.key];
    const fromEnv = env[envName(f.name)];
    let value: unknown;
    if (fromCli !== undefined) value = parseValue(f, fromCli, `--${f.name}`);
    else if (fromEnv !== undefined && fromEnv !== '') value = parseValue(f, fromEnv, `${envName(f.name)} (--${f.name})`);
    else value = f.default;
    if (value !== undefined) out[f.key] = value;
  }
  const config = out as unknown as Config;
  if (!config.enableIpv4 && !config.enableIpv6) {
    throw new ConfigError('--enable-ipv4, --enable-ipv6: at least one family must be enabled', 2, '--enable-ipv4');
  }
  checkListeners(config);
  return config;
}

const TLS_FLAGS = ['--tls-cert-file', '--tls-key-file', '--tls-client-ca-files'] as const;

/**
 * The listener flags that only make sense together (issue 12): TCP is TLS with client
 * certificates or, explicitly, --listen-insecure; the TLS files go together and with
 * --listen; --authz-policy needs TLS; the read-only socket's mode and group need it.
 */
function checkListeners(c: Config): void {
  const fail = (flag: string, problem: string): never => {
    throw new ConfigError(`${flag}: ${problem}`, 2, flag);
  };
  const tls = [c.tlsCertFile, c.tlsKeyFile, c.tlsClientCaFiles];
  const given = TLS_FLAGS.filter((_, i) => tls[i] !== undefined);
  const missing = TLS_FLAGS.filter((_, i) => tls[i] === undefined);
  if (given.length > 0 && missing.length > 0) fail(missing[0]!, `needed with ${given.join(', ')}`);
  if (given.length > 0 && c.listen === undefined) fail(given[0]!, 'needs --listen');
  if (c.listenInsecure && c.listen === undefined) fail('--listen-insecure', 'needs --listen');
  if (c.listenInsecure && given.length > 0) fail('--listen-insecure', `contradicts ${given.join(', ')}`);
  if (c.listen !== undefined && given.length === 0 && !c.listenInsecure) {
    fail('--listen', `TCP needs TLS with client certificates (${TLS_FLAGS.join(', ')}); --listen-insecure serves it in plaintext to anyone`);
  }
  if (c.authzPolicy !== undefined && given.length === 0) fail('--authz-policy', `needs TLS (${TLS_FLAGS.join(', ')}): it maps client certificates to roles`);
  if (c.socketReadonly === undefined) {
    if (c.socketReadonlyMode !== undefined) fail('--socket-readonly-mode', 'needs --socket-readonly');
    if (c.socketReadonlyGroup !== undefined) fail('--socket-readonly-group', 'needs --socket-readonly');
  } else if (c.socketReadonly === c.socket) {
    fail('--socket-readonly', 'must differ from --socket');
  }
}

/**
 * parseConfig for a binary's main: prints help (exit 0) or the error (exit 2, prefixed with
 * the program name) and exits the process; otherwise returns the Config.
 */
export function configOrExit(argv: readonly string[] = process.argv.slice(2), env: NodeJS.ProcessEnv = process.env): Config {
  try {
    return parseConfig(argv, env);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    if (err.exitCode === 0) process.stdout.write(err.message);
    else process.stderr.write(`ctmapd: ${err.message}\n`);
    process.exit(err.exitCode);
  }
}

function parseValue(f: Flag, raw: Raw, source: string): unknown {
  try {
    return f.parse(raw);
  } catch (err) {
    throw new ConfigError(`${source}: ${(err as Error).message}`, 2, `--${f.name}`);
  }
}

function optionIn(message: string): string | undefined {
  return /'(--[a-z0-9-]+)/.exec(message)?.[1];
}

function flag(name: string, key: keyof Config, help: string, def: string | number | undefined, parse: Parse): Flag {
  return { name, key, help, default: def, value: 'required', parse };
}

function boolFlag(name: string, key: keyof Config, help: string, def: boolean): Flag {
  return { name, key, help, default: def, value: 'bool', parse: bool };
}

/** Durations are whole seconds; 0 would make every new entry expire at once. */
/** A time flag: seconds, or Cilium's (Go's) duration syntax ("1h", "5m30s"). */
function seconds(name: string, key: keyof Config, help: string, def: number | undefined, min = 1, max = U32_MAX): Flag {
  return flag(name, key, `${help}, seconds or a duration (1h, 5m30s)`, def, durationIn(min, max));
}

// --- value parsers: throw an Error whose message completes "<flag>: ..." ---

function bool(raw: Raw): boolean {
  if (typeof raw === 'boolean') return raw; // bare --flag / --no-flag
  const v = raw.trim().toLowerCase();
  if (['true', '1', 'yes', 'on'].includes(v)) return true;
  if (['false', '0', 'no', 'off'].includes(v)) return false;
  throw new Error(`want true or false, got ${JSON.stringify(raw)}`);
}

function text(raw: Raw): string {
  if (typeof raw !== 'string') throw new Error('needs a value');
  return raw;
}

function oneOf(choices: readonly string[]): Parse {
  return (raw) => {
    const v = text(raw);
    if (!choices.includes(v)) throw new Error(`want one of ${choices.join('|')}, got ${JSON.stringify(v)}`);
    return v;
  };
}

function oneOfIntegers(choices: readonly number[]): Parse {
  return (raw) => {
    const v = text(raw).trim();
    if (!/^\d+$/.test(v) || !choices.includes(Number(v))) throw new Error(`want one of ${choices.join('|')}, got ${JSON.stringify(raw)}`);
    return Number(v);
  };
}

function integer(min: number, max: number): Parse {
  return (raw) => {
    const v = text(raw).trim();
    if (!/^\d+$/.test(v)) throw new Error(`want an integer in ${min}..${max}, got ${JSON.stringify(raw)}`);
    const n = Number(v);
    if (n < min || n > max) throw new Error(`${n} is out of range ${min}..${max}`);
    return n;
  };
}

function powerOfTwo(min: number, max: number): Parse {
  const inRange = integer(min, max);
  return (raw) => {
    const n = inRange(raw) as number;
    if ((n & (n - 1)) !== 0) throw new Error(`${n} is not a power of two`);
    return n;
  };
}

function durationIn(min: number, max: number): Parse {
  return (raw) => {
    const n = parseDurationSeconds(text(raw));
    if (n < min || n > max) throw new Error(`${JSON.stringify(raw)} (${n} s) is out of range ${min}..${max} seconds`);
    return n;
  };
}

function absolutePath(raw: Raw): string {
  const v = text(raw);
  if (!v.startsWith('/')) throw new Error(`want an absolute path, got ${JSON.stringify(v)}`);
  return v.length > 1 ? v.replace(/\/+$/, '') : v;
}

function socketPath(raw: Raw): string {
  const v = text(raw);
  if (v === '') throw new Error('want a path');
  if (Buffer.byteLength(v) > SOCKET_PATH_MAX) throw new Error(`path longer than ${SOCKET_PATH_MAX} bytes (unix socket limit)`);
  return v;
}

function pathList(raw: Raw): string[] {
  const parts = text(raw).split(',').map((p) => p.trim());
  if (parts.some((p) => p === '')) throw new Error(`want comma-separated absolute paths, got ${JSON.stringify(raw)}`);
  return parts.map((p) => absolutePath(p));
}

function octalMode(raw: Raw): number {
  const v = text(raw).trim();
  if (!/^0?[0-7]{3}$/.test(v)) throw new Error(`want an octal mode such as 0660, got ${JSON.stringify(raw)}`);
  return parseInt(v, 8);
}

function group(raw: Raw): number | string {
  const v = text(raw).trim();
  if (/^\d+$/.test(v) && Number(v) <= U32_MAX) return Number(v);
  if (!/^[A-Za-z_][A-Za-z0-9_.-]{0,31}$/.test(v)) throw new Error(`want a group name or gid, got ${JSON.stringify(raw)}`);
  return v;
}

function hostPort(raw: Raw): string {
  const v = text(raw);
  // IPv6 hosts must be bracketed so the port separator is unambiguous: "[::1]:50051".
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]\s]+):(\d{1,5})$/.exec(v);
  if (!m || Number(m[2]) > 65535) throw new Error(`want HOST:PORT (IPv6 as [addr]:port), got ${JSON.stringify(v)}`);
  return v;
}
