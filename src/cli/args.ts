/**
 * The `ctmap` command line: subcommands, flags, help text and validation, as a pure
 * function of argv and the environment (no I/O, no exit), so that it can be unit-tested.
 * src/cli/main.ts runs what this returns.
 *
 * Flags shared with the daemon default the way the daemon's do, environment included
 * (`--bpf-root` <- CTMAPD_BPF_ROOT, `--socket` <- CTMAPD_SOCKET), so that `ctmap` finds a
 * daemon started with the same environment.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { isIP } from 'node:net';
import * as path from 'node:path';
import { envName } from '../config/config';
import { CLUSTER_ID_MAX_VALUES, DEFAULT_BPF_ROOT, DEFAULT_SOCKET } from '../config/defaults';
import { UsageError } from '../errors';
import type { Family } from '../maps/addr';
import type { CtEventKind } from '../maps/ctmap/events/types';

export type { Family } from '../maps/addr';

/** Cluster ids of the datapath: 0 = the global maps, else 1..ClusterIDMax (at most 511). */
export const CLUSTER_ID_MAX = Math.max(...CLUSTER_ID_MAX_VALUES);

/**
 * Where the daemon is (`--server`, CTMAP_SERVER; else `--socket` / CTMAPD_SOCKET): a gRPC
 * target, "unix:/path" or "host:port", and for host:port the TLS files (the daemon's TCP
 * listener wants a client certificate), or none with --insecure (its --listen-insecure).
 */
export interface CliServer {
  readonly target: string;
  readonly tls?: { readonly caFile: string; readonly certFile: string; readonly keyFile: string };
}

/** The flow criteria of `ct list | count | delete | flush` (DumpFilter), as the flow reads. */
export interface CtFlowFilter {
  /** Flow source addresses or CIDRs (-s, repeatable or comma-separated). */
  readonly src: readonly string[];
  readonly dst: readonly string[];
  readonly sport?: number;
  readonly dport?: number;
  /** IP protocol number (-p tcp, udp, icmp, icmpv6 or a number). */
  readonly proto?: number;
  readonly dir?: 'in' | 'out' | 'service';
  readonly state?: 'established' | 'closing' | 'syn-only' | 'expired';
}

/** What every `ct` command shares: where, which maps, which flows, how to print. */
interface CtSelection {
  readonly server: CliServer;
  readonly family?: Family;
  /** A cluster's maps (0: the global ones), or every open map. */
  readonly clusterId: number | 'all';
  readonly filter: CtFlowFilter;
  readonly output: 'text' | 'json' | 'jsonl';
}

/** What `nat list | flush` share: where, and which SNAT maps (src/cli/nat.ts). */
interface NatSelection {
  readonly server: CliServer;
  /** Undefined: every family the daemon has SNAT maps of. */
  readonly family?: Family;
  /** A cluster's SNAT maps (0: the global ones), or every open one. */
  readonly clusterId: number | 'all';
}

/** What the overview commands share (src/cli/info.ts). */
interface Overview {
  readonly server: CliServer;
  readonly output: 'text' | 'json';
}

/**
 * The bpffs a datapath or fate command loads over: `--bpf-root` or CTMAPD_BPF_ROOT when
 * given; otherwise the default, and `bpfRootFromDaemon` says which daemon to ask for its
 * own (ActiveMaps.bpf_root) before using it (src/cli/bpf-root.ts).
 */
interface BpfRootChoice {
  readonly bpfRoot: string;
  readonly bpfRootFromDaemon?: CliServer;
}

export type CliCommand =
  | (BpfRootChoice & { readonly kind: 'datapath-attach'; readonly dev: string; readonly netns?: string; readonly clusterId: number; readonly json: boolean })
  | (BpfRootChoice & { readonly kind: 'datapath-detach'; readonly dev: string; readonly netns?: string; readonly json: boolean })
  | (BpfRootChoice & { readonly kind: 'datapath-status'; readonly netns?: string; readonly json: boolean })
  | (BpfRootChoice & { readonly kind: 'datapath-reattach'; readonly netns?: string; readonly json: boolean })
  | (BpfRootChoice & { readonly kind: 'datapath-prune'; readonly json: boolean })
  | (BpfRootChoice & { readonly kind: 'fate-attach'; readonly cgroup: string; readonly clusterId: number; readonly json: boolean })
  | (BpfRootChoice & { readonly kind: 'fate-detach'; readonly cgroup: string; readonly json: boolean })
  | (BpfRootChoice & { readonly kind: 'fate-status'; readonly json: boolean })
  | (BpfRootChoice & { readonly kind: 'fate-reattach'; readonly json: boolean })
  | (Overview & { readonly kind: 'maps' })
  | (Overview & { readonly kind: 'stats' })
  | (Overview & { readonly kind: 'gc-status' })
  | (Overview & { readonly kind: 'cluster-list' })
  | (Overview & { readonly kind: 'cluster-create'; readonly clusterId: number })
  | (Overview & { readonly kind: 'cluster-delete'; readonly clusterId: number })
  | (CtSelection & { readonly kind: 'ct-list' })
  | (CtSelection & { readonly kind: 'ct-count' })
  | (CtSelection & { readonly kind: 'ct-delete' })
  | (CtSelection & { readonly kind: 'ct-flush' })
  | (NatSelection & { readonly kind: 'nat-list'; readonly output: 'text' | 'json' | 'jsonl' })
  | (NatSelection & { readonly kind: 'nat-flush'; readonly output: 'text' | 'json' })
  | {
      readonly kind: 'ct-get';
      readonly server: CliServer;
      /** The map's cluster (0: the global maps). */
      readonly clusterId: number;
      /** The flow as `ct list` prints it: src:sport -> dst:dport. */
      readonly src: string;
      readonly dst: string;
      readonly sport: number;
      readonly dport: number;
      readonly proto: number;
      readonly dir: 'in' | 'out' | 'service';
      readonly output: 'text' | 'json';
    }
  | {
      readonly kind: 'gc-run';
      readonly server: CliServer;
      readonly family?: Family;
      /** A cluster's maps (0: the global ones), or every open map (the default). */
      readonly clusterId: number | 'all';
      readonly time?: number;
      readonly ips: readonly string[];
      /** Only entries these flow criteria keep are removed (GCRunRequest.flow). */
      readonly filter: CtFlowFilter;
      readonly output: 'text' | 'json';
    }
  | { readonly kind: 'cluster-watch'; readonly server: CliServer; readonly output: 'text' | 'json'; readonly count?: number }
  | { readonly kind: 'health'; readonly server: CliServer; readonly service: string; readonly timeoutMs: number }
  | {
      readonly kind: 'events';
      readonly server: CliServer;
      readonly family?: Family;
      /** Empty: every kind. */
      readonly kinds: readonly CtEventKind[];
      /** Only the events of entries these flow criteria keep (DumpFilter). */
      readonly filter: CtFlowFilter;
      readonly output: 'json' | 'text';
      /** Stop after this many events (lost notices not counted); undefined: until interrupted. */
      readonly count?: number;
    };

/**
 * Bad usage (exitCode 2; `field` = the flag, e.g. "--dev") or a help request (exitCode 0;
 * the message is the help text for stdout).
 */
export class CliUsageError extends UsageError {
  override name = 'CliUsageError';
}

// --- value parsers: commander reports "option '--x <v>' argument 'y' is invalid. <message>" ---

/** A device name as the kernel accepts it (dev_valid_name): 1..15 bytes, no '/', ':' or space. */
export function parseDev(raw: string): string {
  if (raw.length === 0 || Buffer.byteLength(raw) > 15) throw new InvalidArgumentError('a device name is 1..15 characters');
  if (raw === '.' || raw === '..' || /[/:\s]/.test(raw)) throw new InvalidArgumentError('not a valid device name');
  return raw;
}

/** A name under /run/netns, as `ip netns add` creates it. */
export function parseNetns(raw: string): string {
  if (raw.length === 0 || raw === '.' || raw === '..' || raw.includes('/') || raw.includes('\0')) {
    throw new InvalidArgumentError('want the name of a network namespace under /run/netns (ip netns list)');
  }
  return raw;
}

export function parseClusterId(raw: string): number {
  const v = raw.trim();
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > CLUSTER_ID_MAX) {
    throw new InvalidArgumentError(`want an integer in 0..${CLUSTER_ID_MAX} (0 = the global maps)`);
  }
  return n;
}

export function parseAbsolutePath(raw: string): string {
  if (!path.isAbsolute(raw)) throw new InvalidArgumentError('want an absolute path');
  return path.normalize(raw);
}

export function parseSocket(raw: string): string {
  // sun_path is 108 bytes including the terminating NUL.
  if (!path.isAbsolute(raw) || Buffer.byteLength(raw) > 107) throw new InvalidArgumentError('want an absolute unix socket path of at most 107 bytes');
  return raw;
}

/**
 * `--server`: an absolute socket path or "unix:PATH" (a unix socket), else "HOST:PORT"
 * (an IPv6 host in brackets). Returns the gRPC target.
 */
export function parseServer(raw: string): string {
  const v = raw.trim();
  if (v.startsWith('unix:')) return `unix:${parseSocket(v.slice(5))}`;
  if (v.startsWith('/')) return `unix:${parseSocket(v)}`;
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(v);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) throw new InvalidArgumentError('want a unix socket path, unix:PATH, or HOST:PORT');
  return v;
}

/** `-p`: a protocol name conntrack and Cilium print, or a number 0..255. */
export function parseProto(raw: string): number {
  const names: Record<string, number> = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58, 'ipv6-icmp': 58, sctp: 132 };
  const v = raw.trim().toLowerCase();
  if (v in names) return names[v]!;
  if (/^\d+$/.test(v) && Number(v) <= 255) return Number(v);
  throw new InvalidArgumentError('want tcp, udp, icmp, icmpv6, sctp or a protocol number 0..255');
}

/** A port 0..65535. */
export function parsePort(raw: string): number {
  const v = raw.trim();
  if (!/^\d+$/.test(v) || Number(v) > 65535) throw new InvalidArgumentError('want a port, 0..65535');
  return Number(v);
}

/** One IPv4 or IPv6 address (no CIDR): a key's address. */
export function parseAddress(raw: string): string {
  const v = raw.trim();
  if (isIP(v) === 0) throw new InvalidArgumentError('want one IPv4 or IPv6 address');
  return v;
}

/** `--cluster-id N|all`. */
export function parseClusterSelection(raw: string): number | 'all' {
  return raw.trim().toLowerCase() === 'all' ? 'all' : parseClusterId(raw);
}

/** -s / -d: addresses or CIDRs, repeatable and comma-separated; checked by the daemon. */
function collectAddresses(raw: string, previous: string[] = []): string[] {
  const items = raw.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
  if (items.length === 0) throw new InvalidArgumentError('want an address or CIDR');
  return [...previous, ...items];
}

export function parseFamily(raw: string): Family {
  const v = raw.toLowerCase();
  if (v === 'ipv4' || v === '4') return 'ipv4';
  if (v === 'ipv6' || v === '6') return 'ipv6';
  throw new InvalidArgumentError('want ipv4 or ipv6');
}

const EVENT_KINDS: readonly CtEventKind[] = ['new', 'close', 'destroy'];

/** `--kind new,close,destroy`: a comma-separated list of event kinds, each at most once counted. */
export function parseEventKinds(raw: string): CtEventKind[] {
  const kinds = raw.split(',').map((k) => k.trim().toLowerCase());
  const bad = kinds.find((k) => !(EVENT_KINDS as readonly string[]).includes(k));
  if (bad !== undefined) throw new InvalidArgumentError(`want a comma-separated list of new, close, destroy; got ${JSON.stringify(bad)}`);
  return [...new Set(kinds as CtEventKind[])];
}

/** `--count N`: a positive integer. */
export function parseCount(raw: string): number {
  const v = raw.trim();
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('want a positive integer');
  return n;
}

/** Seconds to wait for the daemon's answer: a positive number, fractions allowed (0.5). */
export function parseTimeout(raw: string): number {
  const v = raw.trim();
  const n = Number(v);
  if (!/^\d+(\.\d+)?$/.test(v) || !(n > 0) || n > 3600) throw new InvalidArgumentError('want seconds, a number in (0, 3600]');
  return Math.round(n * 1000);
}

export function parseCtTime(raw: string): number {
  const v = raw.trim();
  if (!/^\d+$/.test(v) || Number(v) > 0xffff_ffff) throw new InvalidArgumentError('want CT clock seconds, an integer in 0..4294967295 (0 = now)');
  return Number(v);
}

const DATAPATH_HELP = `
The datapath is bpf/ct_datapath.bpf.o: ct_ingress and ct_egress, loaded over the CT maps
the daemon pinned under <bpf-root>/tc/globals (start ctmapd with the same --bpf-root
first) and attached as direct-action tc filters to the device's clsact hooks. They only
observe: every packet passes.

Ownership: attach records what it created under <bpf-root>/ctmapd/datapath (the attached
programs pinned with their tc handle and priority, and whether it created the clsact
qdisc). detach removes exactly those filters (checked by program id), then the clsact
qdisc only if attach created it and nothing else is attached; other tc filters on the
device are never touched. Attaching again replaces ctmap's own filters in place.
reattach does that for every attachment recorded in the namespace (ctmapd runs it after
a map migration, so that the programs use the new maps).

prune removes the records of network namespaces that no longer exist, and unpins their
programs: the namespace took its devices and filters with it, but the pinned programs
kept every map they were loaded with (after a migration: the old maps). ctmapd prunes at
every start too. It needs the host's pid namespace, where every process is visible.

--netns NAME runs the command inside /run/netns/NAME with nsenter --net (not
ip netns exec, which would remount /sys and hide the bpffs under /sys/fs/bpf).

--bpf-root: without the flag (or CTMAPD_BPF_ROOT), the command asks the daemon at
--server / --socket for the bpf-root it runs with (ActiveMaps.bpf_root), so that one
setting is enough. When no daemon answers (or it runs the memory backend), it uses
${DEFAULT_BPF_ROOT} and says so on stderr. An explicit --bpf-root or CTMAPD_BPF_ROOT wins.

Examples:
  ctmap datapath attach --dev eth0
  ctmap datapath attach --netns blue --dev veth0 --cluster-id 7
  ctmap datapath detach --netns blue --dev veth0
  ctmap datapath status --netns blue
  ctmap datapath prune`;

const FATE_HELP = `
Fate-sharing is bpf/ct_fate.bpf.o: three cgroup programs that make the CT entries of a
socket in the cgroup expire when the socket closes (both closing bits, lifetime = now +
--bpf-ct-timeout-regular-tcp-fin), instead of living out their lifetime until GC:
sockops records a TCP socket's flow when it is established, cgroup_skb/egress a UDP
socket's at its first packet, and cgroup/sock_release (close, exit, kill -9) and the TCP
state change to CLOSE (an RST) expire its entries, in the global maps and, with
--cluster-id, in that cluster's maps. Entries are expired, never deleted.

Ownership: attach pins its bpf_links under <bpf-root>/ctmapd/fate/cg<cgroup id>, so the
programs stay attached after ctmap exits; other programs on the cgroup are never touched.
detach detaches and unpins exactly those links. Attaching again replaces ctmap's programs
in place. ctmapd reattaches them over the new maps after a map migration.

--bpf-root: as for ctmap datapath, asked of the daemon (--server / --socket) when neither
the flag nor CTMAPD_BPF_ROOT is given; ${DEFAULT_BPF_ROOT} with a note on stderr when none
answers.

Examples:
  ctmap fate attach --cgroup /sys/fs/cgroup/unified/workload
  ctmap fate attach --cgroup /sys/fs/cgroup/remote --cluster-id 7
  ctmap fate detach --cgroup /sys/fs/cgroup/unified/workload
  ctmap fate status`;

const NAT_HELP = `
The SNAT maps hold the datapath's source-NAT mappings: an OUT entry per translated flow
(its tuple -> the address and port it was translated to) and the IN entry that maps the
replies back. Every CT entry the daemon deletes (GC, ct delete, ct flush) takes its
mapping with it. list prints one line per entry as \`cilium bpf nat list\` does, e.g.
  TCP OUT 10.0.0.1:40000 -> 1.1.1.1:80 XLATE_SRC 192.168.1.1:40000 Created=120sec ago NeedsCT=1
with "Created" on the daemon's CT clock. flush removes every mapping of the selected maps
and leaves the CT entries alone: a flow whose mapping is gone gets a new one at its next
packet.

Examples:
  ctmap nat list
  ctmap nat list -f ipv6 --cluster-id all -o jsonl
  ctmap nat flush -f ipv4 --cluster-id 7`;

/**
 * Parses the arguments after the program name. Returns the command to run; throws
 * CliUsageError: exitCode 2 for unknown commands or flags, missing or invalid values (the
 * message names the flag), exitCode 0 with the help text for --help. Never prints, never
 * exits.
 */
export function parseCli(argv: readonly string[], env: NodeJS.ProcessEnv): CliCommand {
  let out = '';
  let result: CliCommand | undefined;
  const bpfRootDefault = env[envName('bpf-root')] || DEFAULT_BPF_ROOT;
  const socketDefault = env[envName('socket')] || DEFAULT_SOCKET;

  const program = new Command('ctmap')
    .description('Command-line client of ctmapd: attach the conntrack datapath, read and collect the CT maps.')
    .helpOption('-h, --help', 'show this help')
    .exitOverride()
    .showSuggestionAfterError(true)
    .configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (out += s) });
  program.addHelpText('after', '\nRun `ctmap <command> --help` for the flags of a command. Exit codes: 0 ok, 1 failure, 2 bad usage.');

  const bpfRoot = (): Option =>
    new Option('--bpf-root <dir>', `bpffs mount the daemon runs with [env CTMAPD_BPF_ROOT]`).default(bpfRootDefault).argParser(parseAbsolutePath);
  const netns = (): Option => new Option('--netns <name>', 'act inside the network namespace /run/netns/<name>').argParser(parseNetns);
  const json = (): Option => new Option('--json', 'print the result as JSON');
  /** The options that say where the daemon is; serverOf() reads them. */
  const withServer = (c: Command): Command =>
    c
      .addOption(new Option('--server <address>', 'the daemon: a unix socket path, unix:PATH, or HOST:PORT (TLS unless --insecure) [env CTMAP_SERVER]').argParser(parseServer))
      .addOption(new Option('--socket <path>', `unix socket of the daemon, when no --server is given [env CTMAPD_SOCKET]`).default(socketDefault).argParser(parseSocket))
      .addOption(new Option('--tls-ca-file <file>', 'HOST:PORT: PEM CA the daemon\'s certificate must chain to').argParser(parseAbsolutePath))
      .addOption(new Option('--tls-cert-file <file>', 'HOST:PORT: PEM client certificate to present').argParser(parseAbsolutePath))
      .addOption(new Option('--tls-key-file <file>', 'HOST:PORT: PEM private key of --tls-cert-file').argParser(parseAbsolutePath))
      .addOption(new Option('--insecure', 'HOST:PORT in plaintext (a daemon started with --listen-insecure)'));
  const serverOf = (o: Record<string, string | boolean | undefined>): CliServer => {
    let target: string;
    if (o.server !== undefined) target = o.server as string;
    else if (env.CTMAP_SERVER) {
      try {
        target = parseServer(env.CTMAP_SERVER);
      } catch (err) {
        throw new CliUsageError(`--server from CTMAP_SERVER=${JSON.stringify(env.CTMAP_SERVER)}: ${(err as Error).message}`, 2, '--server');
      }
    } else target = `unix:${o.socket as string}`;
    if (target.startsWith('unix:')) return { target };
    if (o.insecure) return { target };
    const missing = (['tls-ca-file', 'tls-cert-file', 'tls-key-file'] as const).filter((f) => !o[f.replace(/-(\w)/g, (_m, c: string) => c.toUpperCase())]);
    if (missing.length > 0) throw new CliUsageError(`--server ${target}: TCP needs --tls-ca-file, --tls-cert-file and --tls-key-file (missing ${missing.map((f) => `--${f}`).join(', ')}), or --insecure`, 2, `--${missing[0]}`);
    return { target, tls: { caFile: o.tlsCaFile as string, certFile: o.tlsCertFile as string, keyFile: o.tlsKeyFile as string } };
  };
  const family = (): Option => new Option('--family <family>', 'ipv4 or ipv6 (default: both)').argParser(parseFamily);
  /**
   * An explicit --bpf-root (the flag, or CTMAPD_BPF_ROOT) is used as given; the default
   * only when the daemon does not say which it runs with (commander tells a flag from its
   * default; the env var is folded into the default, so it is checked here).
   */
  const bpfRootOf = (o: Record<string, any>, c: Command): BpfRootChoice =>
    c.getOptionValueSource('bpfRoot') === 'cli' || env[envName('bpf-root')] ? { bpfRoot: o.bpfRoot } : { bpfRoot: o.bpfRoot, bpfRootFromDaemon: serverOf(o) };

  const datapath = program
    .command('datapath')
    .description('attach the conntrack datapath to a device, detach it, list and prune attachments')
    .addHelpText('after', DATAPATH_HELP);
  withServer(datapath.command('attach'))
    .description("load the datapath over the daemon's maps and attach it to the clsact ingress and egress hooks of a device")
    .addOption(new Option('--dev <name>', 'network device to attach to').makeOptionMandatory().argParser(parseDev))
    .addOption(netns())
    .addOption(bpfRoot())
    .addOption(
      new Option('--cluster-id <n>', "track into this cluster's per-cluster maps instead of the global ones (0..511, 0 = global)")
        .default(0)
        .argParser(parseClusterId),
    )
    .addOption(json())
    .action((o, c: Command) => {
      result = { kind: 'datapath-attach', dev: o.dev, netns: o.netns, ...bpfRootOf(o, c), clusterId: o.clusterId, json: !!o.json };
    });
  withServer(datapath.command('detach'))
    .description('remove the filters ctmap attached to a device (and the clsact qdisc if ctmap created it and nothing else uses it)')
    .addOption(new Option('--dev <name>', 'network device to detach from').makeOptionMandatory().argParser(parseDev))
    .addOption(netns())
    .addOption(bpfRoot())
    .addOption(json())
    .action((o, c: Command) => {
      result = { kind: 'datapath-detach', dev: o.dev, netns: o.netns, ...bpfRootOf(o, c), json: !!o.json };
    });
  withServer(datapath.command('status'))
    .description('list the devices ctmap attached the datapath to, and whether its filters are still in place')
    .addOption(netns())
    .addOption(bpfRoot())
    .addOption(json())
    .action((o, c: Command) => {
      result = { kind: 'datapath-status', netns: o.netns, ...bpfRootOf(o, c), json: !!o.json };
    });
  withServer(datapath.command('reattach'))
    .description('load the datapath again over the maps now pinned, in place of every attachment ctmap recorded in the namespace')
    .addOption(netns())
    .addOption(bpfRoot())
    .addOption(json())
    .action((o, c: Command) => {
      result = { kind: 'datapath-reattach', netns: o.netns, ...bpfRootOf(o, c), json: !!o.json };
    });

  withServer(datapath.command('prune'))
    .description('remove the records of network namespaces that are gone, unpinning their programs (and freeing the maps only they held)')
    .addOption(bpfRoot())
    .addOption(json())
    .action((o, c: Command) => {
      result = { kind: 'datapath-prune', ...bpfRootOf(o, c), json: !!o.json };
    });

  const cgroup = (): Option => new Option('--cgroup <path>', 'a cgroup2 directory (absolute path)').makeOptionMandatory().argParser(parseAbsolutePath);
  const fate = program
    .command('fate')
    .description("expire a socket's CT entries when it closes: attach fate-sharing to a cgroup, detach it, list attachments")
    .addHelpText('after', FATE_HELP);
  withServer(fate.command('attach'))
    .description("load fate-sharing over the daemon's maps and attach it to a cgroup (its sockets and its descendants')")
    .addOption(cgroup())
    .addOption(bpfRoot())
    .addOption(
      new Option('--cluster-id <n>', "also expire entries in this cluster's per-cluster maps (0..511, 0 = the global maps only)").default(0).argParser(parseClusterId),
    )
    .addOption(json())
    .action((o, c: Command) => {
      result = { kind: 'fate-attach', cgroup: o.cgroup, ...bpfRootOf(o, c), clusterId: o.clusterId, json: !!o.json };
    });
  withServer(fate.command('detach'))
    .description('detach the fate-sharing links ctmap attached to a cgroup')
    .addOption(cgroup())
    .addOption(bpfRoot())
    .addOption(json())
    .action((o, c: Command) => {
      result = { kind: 'fate-detach', cgroup: o.cgroup, ...bpfRootOf(o, c), json: !!o.json };
    });
  withServer(fate.command('status'))
    .description('list the cgroups ctmap attached fate-sharing to, and whether its links are still attached')
    .addOption(bpfRoot())
    .addOption(json())
    .action((o, c: Command) => {
      result = { kind: 'fate-status', ...bpfRootOf(o, c), json: !!o.json };
    });
  withServer(fate.command('reattach'))
    .description('load fate-sharing again over the maps now pinned, into every link ctmap recorded (ctmapd runs it after a migration)')
    .addOption(bpfRoot())
    .addOption(json())
    .action((o, c: Command) => {
      result = { kind: 'fate-reattach', ...bpfRootOf(o, c), json: !!o.json };
    });

  const ct = program.command('ct').description('read the CT maps through the daemon');
  /** The flow criteria (DumpFilter) of `ct` commands and `events`; flowFilterOf() reads them. */
  const withFlowFilter = (c: Command): Command =>
    c
      .addOption(new Option('-s, --src <addr|cidr>', "the flow's source, as `ct list` prints it (repeatable, or comma-separated)").argParser(collectAddresses))
      .addOption(new Option('-d, --dst <addr|cidr>', "the flow's destination").argParser(collectAddresses))
      .addOption(new Option('--sport <port>', "the flow's source port").argParser(parsePort))
      .addOption(new Option('--dport <port>', "the flow's destination port").argParser(parsePort))
      .addOption(new Option('-p, --proto <proto>', 'tcp, udp, icmp, icmpv6, sctp or a protocol number').argParser(parseProto))
      .addOption(new Option('--dir <dir>', 'in, out or service (the entry\'s direction)').choices(['in', 'out', 'service']))
      .addOption(new Option('--state <state>', 'established, closing, syn-only or expired (at the CT clock\'s now)').choices(['established', 'closing', 'syn-only', 'expired']));
  const flowFilterOf = (o: Record<string, any>): CtFlowFilter => ({ src: o.src ?? [], dst: o.dst ?? [], sport: o.sport, dport: o.dport, proto: o.proto, dir: o.dir, state: o.state });
  /** The maps, the flow filter and the output of a `ct` command. */
  const ctCommand = (name: string, description: string, outputs: readonly string[] = ['text', 'json']): Command =>
    withFlowFilter(
      withServer(ct.command(name))
        .description(description)
        .addOption(new Option('-f, --family <family>', 'ipv4 or ipv6 (default: both)').argParser(parseFamily))
        .addOption(new Option('--cluster-id <n|all>', "a cluster's per-cluster maps (0 = the global maps), or all: every open map").default(0).argParser(parseClusterSelection)),
    ).addOption(new Option('-o, --output <format>', outputs.join(', ')).choices([...outputs]).default('text'));
  const selectionOf = (o: Record<string, any>): Omit<CtSelection, 'output'> & { output: 'text' | 'json' | 'jsonl' } => ({
    server: serverOf(o),
    family: o.family,
    clusterId: o.clusterId,
    filter: flowFilterOf(o),
    output: o.output,
  });
  ctCommand('list', 'print the entries the filter keeps: text as `cilium bpf ct list global` with the remaining lifetime, json (one array) or jsonl (one record per line)', ['text', 'json', 'jsonl']).action((o) => {
    result = { kind: 'ct-list', ...selectionOf(o) };
  });
  ctCommand('count', 'count the entries the filter keeps, per map and in total (CTMaps.Count)').action((o) => {
    result = { kind: 'ct-count', ...selectionOf(o) };
  });
  ctCommand('delete', 'delete the entries the filter keeps, each with its SNAT mapping (CTMaps.Delete with a filter); at least one criterion is required').action((o) => {
    const sel = selectionOf(o);
    const f = sel.filter;
    if (f.src.length + f.dst.length === 0 && [f.sport, f.dport, f.proto, f.dir, f.state].every((x) => x === undefined)) {
      throw new CliUsageError('ct delete needs a filter (-s/--src, -d/--dst, --sport, --dport, -p/--proto, --dir or --state); ct flush removes everything', 2, '--src');
    }
    result = { kind: 'ct-delete', ...sel };
  });
  ctCommand('flush', 'remove every entry of the maps, or only those the filter keeps (CTMaps.Flush)').action((o) => {
    result = { kind: 'ct-flush', ...selectionOf(o) };
  });

  const nat = program
    .command('nat')
    .description('read and flush the SNAT maps through the daemon (cilium_snat_v4_external, cilium_snat_v6_external, per cluster)')
    .addHelpText('after', NAT_HELP);
  /** The SNAT maps and the output of a `nat` command. */
  const natCommand = (name: string, description: string, outputs: readonly string[]): Command =>
    withServer(nat.command(name))
      .description(description)
      .addOption(new Option('-f, --family <family>', 'ipv4 or ipv6 (default: every family the daemon has SNAT maps of)').argParser(parseFamily))
      .addOption(new Option('--cluster-id <n|all>', "a cluster's per-cluster SNAT maps (0 = the global maps), or all: the global and every cluster's").default(0).argParser(parseClusterSelection))
      .addOption(new Option('-o, --output <format>', outputs.join(', ')).choices([...outputs]).default('text'));
  natCommand('list', 'print every SNAT entry: text as `cilium bpf nat list`, json (one array) or jsonl (one record per line) (NATMaps.DumpEntries)', ['text', 'json', 'jsonl']).action((o) => {
    result = { kind: 'nat-list', server: serverOf(o), family: o.family, clusterId: o.clusterId, output: o.output };
  });
  natCommand('flush', 'remove every entry of the SNAT maps (NATMaps.Flush); the CT entries stay', ['text', 'json']).action((o) => {
    result = { kind: 'nat-flush', server: serverOf(o), family: o.family, clusterId: o.clusterId, output: o.output };
  });
  withServer(ct.command('get'))
    .description('look up one flow (CTMaps.Lookup) as `ct list` prints it: src:sport -> dst:dport; exit 1 when there is no such entry')
    .addOption(new Option('-s, --src <addr>', "the flow's source address").makeOptionMandatory().argParser(parseAddress))
    .addOption(new Option('-d, --dst <addr>', "the flow's destination address").makeOptionMandatory().argParser(parseAddress))
    .addOption(new Option('--sport <port>', "the flow's source port").default(0).argParser(parsePort))
    .addOption(new Option('--dport <port>', "the flow's destination port").default(0).argParser(parsePort))
    .addOption(new Option('-p, --proto <proto>', 'tcp, udp, icmp, icmpv6, sctp or a protocol number').makeOptionMandatory().argParser(parseProto))
    .addOption(new Option('--dir <dir>', "the entry's direction: in, out or service").choices(['in', 'out', 'service']).default('out'))
    .addOption(new Option('--cluster-id <n>', "the cluster's per-cluster maps (0 = the global maps)").default(0).argParser(parseClusterId))
    .addOption(new Option('-o, --output <format>', 'text or json').choices(['text', 'json']).default('text'))
    .action((o) => {
      if (isIP(o.src) !== isIP(o.dst)) throw new CliUsageError(`--dst: ${o.dst} is not of the family of --src ${o.src}`, 2, '--dst');
      result = { kind: 'ct-get', server: serverOf(o), clusterId: o.clusterId, src: o.src, dst: o.dst, sport: o.sport, dport: o.dport, proto: o.proto, dir: o.dir, output: o.output };
    });

  const output = (): Option => new Option('-o, --output <format>', 'text or json').choices(['text', 'json']).default('text');
  withServer(program.command('maps'))
    .description('every open CT and SNAT map of the daemon (global and per cluster): pin, size, entries and fill level')
    .addOption(output())
    .action((o) => {
      result = { kind: 'maps', server: serverOf(o), output: o.output };
    });
  withServer(program.command('stats'))
    .description("the datapath's and fate-sharing's counters: the totals, then one line per possible CPU as conntrack -S prints them (json: datapath, perCpu, maps), and each map's fill level")
    .addOption(output())
    .action((o) => {
      result = { kind: 'stats', server: serverOf(o), output: o.output };
    });
  const cluster = program.command('cluster').description('the per-cluster CT maps of a clustermesh');
  withServer(cluster.command('list'))
    .description('the clusters whose maps are open')
    .addOption(output())
    .action((o) => {
      result = { kind: 'cluster-list', server: serverOf(o), output: o.output };
    });
  for (const [name, kind, what] of [
    ['create', 'cluster-create', "create a cluster's per-cluster maps (a cluster joining)"],
    ['delete', 'cluster-delete', "delete a cluster's per-cluster maps and their entries (a cluster leaving)"],
  ] as const) {
    withServer(cluster.command(name))
      .description(what)
      .addOption(new Option('--cluster-id <n>', 'the cluster, 1..ClusterIDMax').makeOptionMandatory().argParser(parseClusterId))
      .addOption(output())
      .action((o) => {
        if (o.clusterId === 0) throw new CliUsageError('--cluster-id: 0 is the global maps, not a cluster', 2, '--cluster-id');
        result = { kind, server: serverOf(o), clusterId: o.clusterId, output: o.output };
      });
  }

  withServer(cluster.command('watch'))
    .description('stream the joins and leaves of clusters (ClusterCTMaps.WatchMembership): cluster id, name, source, entries dropped; notices of missed events')
    .addOption(new Option('-o, --output <format>', 'text, or json (one object per line; jsonl is the same)').choices(['text', 'json', 'jsonl']).default('text'))
    .addOption(new Option('--count <n>', 'exit 0 after this many join/leave events (default: watch until interrupted)').argParser(parseCount))
    .action((o) => {
      result = { kind: 'cluster-watch', server: serverOf(o), output: o.output === 'text' ? 'text' : 'json', count: o.count };
    });

  const gc = program.command('gc').description('garbage collection through the daemon');
  withServer(gc.command('status'))
    .description("the GC scheduler per family: interval, last and next run, counts, why the last pass ran, fill-up signals")
    .addOption(output())
    .action((o) => {
      result = { kind: 'gc-status', server: serverOf(o), output: o.output };
    });
  withFlowFilter(withServer(gc.command('run')))
    .description(
      'run one GC pass now that removes expired entries (GCRunner.Run) and print what it did; with flow criteria (as `ct list` takes them) only the matching entries are candidates. Progress on stderr when it is a terminal',
    )
    .addOption(new Option('-f, --family <family>', 'ipv4 or ipv6 (default: both)').argParser(parseFamily))
    .addOption(new Option('--cluster-id <n|all>', "a cluster's per-cluster maps (0 = the global maps), or all: every open map").default('all').argParser(parseClusterSelection))
    .addOption(new Option('--time <seconds>', 'remove entries whose lifetime is below this CT clock time (default: now)').argParser(parseCtTime))
    .addOption(new Option('--ip <addr|cidr>', 'also remove every entry with this address or CIDR on either side (GCFilter.match_ips; repeatable, or comma-separated)').argParser(collectAddresses))
    .addOption(output())
    .action((o) => {
      result = { kind: 'gc-run', server: serverOf(o), family: o.family, clusterId: o.clusterId, time: o.time, ips: o.ip ?? [], filter: flowFilterOf(o), output: o.output };
    });

  withFlowFilter(withServer(program.command('events')))
    .description('watch the CT lifecycle events (CTEvents.WatchBatched): NEW, CLOSE and DESTROY with their reasons and sequence numbers, and notices of lost events')
    .addOption(family())
    .addOption(new Option('--kind <kinds>', 'only these kinds, comma-separated: new, close, destroy (default: all)').argParser(parseEventKinds))
    .addOption(new Option('-o, --output <format>', 'json (one object per line) or text').choices(['json', 'text']).default('text'))
    .addOption(new Option('--count <n>', 'exit 0 after this many events (default: watch until interrupted)').argParser(parseCount))
    .action((o) => {
      result = { kind: 'events', server: serverOf(o), family: o.family, kinds: o.kind ?? [], filter: flowFilterOf(o), output: o.output, count: o.count };
    });

  withServer(program.command('health'))
    .description(
      "ask the daemon's health service (grpc.health.v1.Health/Check) whether it is serving; exit 0 only when SERVING (a container's liveness/readiness probe)",
    )
    .addOption(new Option('--service <name>', 'a served service (e.g. ctmap.v1.CTMaps) instead of the whole server').default(''))
    .addOption(new Option('--timeout <seconds>', 'give up after this long (exit 1)').default(3000, '3').argParser(parseTimeout))
    .action((o) => {
      result = { kind: 'health', server: serverOf(o), service: o.service, timeoutMs: o.timeout };
    });

  try {
    program.parse([...argv], { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help (and `help`) exit 0; a group without its subcommand shows help as an error.
      if (err.exitCode === 0) throw new CliUsageError(out, 0);
      if (err.code === 'commander.help' || err.code === 'commander.helpDisplayed') throw new CliUsageError(`missing command\n\n${out}`, 2);
      throw new CliUsageError(err.message.replace(/^error: /, ''), 2, optionIn(err.message));
    }
    throw err;
  }
  if (!result) throw new CliUsageError(`missing command\n\n${program.helpInformation()}`, 2);
  // Environment defaults bypass commander's argParser: check them here, naming both.
  if ('bpfRoot' in result) checkEnvDefault(result.bpfRoot, parseAbsolutePath, '--bpf-root', 'CTMAPD_BPF_ROOT');
  if ('server' in result && result.server.target.startsWith('unix:')) checkEnvDefault(result.server.target.slice(5), parseSocket, '--socket', 'CTMAPD_SOCKET');
  return result;
}

function checkEnvDefault(value: string, parse: (raw: string) => unknown, flag: string, envVar: string): void {
  try {
    parse(value);
  } catch (err) {
    throw new CliUsageError(`${flag} (from ${envVar}) ${JSON.stringify(value)}: ${(err as Error).message}`, 2, flag);
  }
}

function optionIn(message: string): string | undefined {
  // "option '--family <family>'" or, with a short form, "option '-f, --family <family>'".
  return /'(?:-[a-zA-Z], )?(--[a-z0-9-]+)/.exec(message)?.[1];
}
