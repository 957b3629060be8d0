/**
 * The operator's overview commands, like conntrack -S / -C: `ctmap maps` (every open CT
 * and SNAT map with its pin, size, entries and fill level), `ctmap stats` (the datapath's
 * and fate-sharing's counters), `ctmap gc status` (the scheduler per family) and `ctmap
 * cluster list | create | delete` (the per-cluster maps). Text for people, json for tools.
 */
import { clusterCtMapsClient, ctMapsClient, gcRunnerClient } from '../api/clients';
import type { MapInfoMsg, NatMapInfoMsg } from '../api/ct-proto';
import type { CliCommand } from './args';
import { connection, unary } from './client';
import type { Io } from './datapath';

type InfoCommand = Extract<CliCommand, { kind: 'maps' | 'stats' | 'gc-status' | 'cluster-list' | 'cluster-create' | 'cluster-delete' }>;


/** How `maps` names a SNAT map: "IPv4 SNAT global", "IPv6 SNAT cluster 7". */
const natRefText = (m: NatMapInfoMsg): string => `${m.family === 'FAMILY_IPV6' ? 'IPv6' : 'IPv4'} SNAT ${m.cluster_id ? `cluster ${m.cluster_id}` : 'global'}`;

const refText = (m: MapInfoMsg): string =>
  `${m.ref.family === 'FAMILY_IPV6' ? 'IPv6' : 'IPv4'} ${m.ref.kind === 'MAP_KIND_TCP' ? 'TCP' : 'any'} ${m.ref.cluster_id ? `cluster ${m.ref.cluster_id}` : 'global'}`;

/** Rows padded to their widest cell, two spaces apart. */
function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return `${rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ')).join('\n')}\n`;
}

const fill = (entries: number, max: number): string => `${max > 0 ? ((entries / max) * 100).toFixed(1) : '0.0'} %`;

/** Runs one overview command; resolves with the exit code, rejects with CliRpcError. */
export async function runInfo(cmd: InfoCommand, io: Io): Promise<number> {
  const json = (v: unknown): void => void io.out(`${JSON.stringify(v)}\n`);
  switch (cmd.kind) {
    case 'maps': {
      const c = ctMapsClient(...connection(cmd.server));
      try {
        const res = await unary(c, 'CTMaps.ActiveMaps', cmd.server, c.ActiveMaps, { with_counts: true });
        // CT maps first, then their SNAT partners; json tells them apart by kind.
        const maps = [
          ...res.maps.map((m) => ({ kind: 'ct', map: refText(m), name: m.name, pin: m.pin_path, maxEntries: m.max_entries, entries: Number(m.entries), backend: m.backend })),
          ...res.nat_maps.map((m) => ({ kind: 'snat', map: natRefText(m), name: m.name, pin: m.pin_path, maxEntries: m.max_entries, entries: Number(m.entries), backend: m.backend })),
        ];
        if (cmd.output === 'json') json(maps);
        else io.out(table([['MAP', 'NAME', 'ENTRIES', 'MAX', 'FILL', 'PIN'], ...maps.map((m) => [m.map, m.name, String(m.entries), String(m.maxEntries), fill(m.entries, m.maxEntries), m.pin])]));
        return 0;
      } finally {
        c.close();
      }
    }
    case 'stats': {
      const c = ctMapsClient(...connection(cmd.server));
      try {
        const res = await unary(c, 'CTMaps.ActiveMaps', cmd.server, c.ActiveMaps, { with_counts: true, per_cpu: true });
        const numbers = (stats: Record<string, string>): Record<string, number> => Object.fromEntries(Object.entries(stats).map(([k, v]) => [k, Number(v)]));
        const counters = numbers(res.datapath ?? {});
        const perCpu = res.datapath_per_cpu.map(numbers);
        const maps = res.maps.map((m) => ({ map: refText(m), entries: Number(m.entries), maxEntries: m.max_entries }));
        if (cmd.output === 'json') json({ datapath: counters, perCpu, maps });
        else {
          io.out(table([['COUNTER', 'TOTAL'], ...Object.entries(counters).map(([k, v]) => [k, String(v)])]));
          // As `conntrack -S` prints them: one line per CPU, every counter as name=value.
          if (perCpu.length > 0) io.out(`\n${perCpu.map((cpu, i) => `cpu=${i} ${Object.entries(cpu).map(([k, v]) => `${k}=${v}`).join(' ')}`).join('\n')}\n`);
          io.out(`\n${table([['MAP', 'ENTRIES', 'FILL'], ...maps.map((m) => [m.map, String(m.entries), fill(m.entries, m.maxEntries)])])}`);
        }
        return 0;
      } finally {
        c.close();
      }
    }
    case 'gc-status': {
      const c = gcRunnerClient(...connection(cmd.server));
      try {
        const s = await unary(c, 'GCRunner.Status', cmd.server, c.Status, {});
        if (cmd.output === 'json') json(s);
        else {
          const when = (ms: string): string => (Number(ms) > 0 ? new Date(Number(ms)).toISOString() : '-');
          io.out(
            table([
              ['FAMILY', 'INTERVAL', 'LAST RUN', 'NEXT RUN', 'RUNS', 'DELETED', 'ALIVE', 'LAST REASON', 'SIGNALS (api/insert-failed/pressure)'],
              ...s.families.map((f) => [
                f.family === 'FAMILY_IPV6' ? 'IPv6' : 'IPv4',
                `${f.interval_seconds} s`,
                when(f.last_run_unix_ms),
                when(f.next_run_unix_ms),
                f.runs,
                f.deleted,
                f.alive,
                f.last_pass_reason || '-',
                `${f.signals_api}/${f.signals_insert_failed}/${f.signals_pressure}`,
              ]),
            ]),
          );
        }
        return 0;
      } finally {
        c.close();
      }
    }
    case 'cluster-list':
    case 'cluster-create':
    case 'cluster-delete': {
      const c = clusterCtMapsClient(...connection(cmd.server));
      try {
        if (cmd.kind === 'cluster-list') {
          const res = await unary(c, 'ClusterCTMaps.GetAllClusterCTMaps', cmd.server, c.GetAllClusterCTMaps, {});
          const clusters = res.clusters.map((k) => ({ clusterId: k.cluster_id, maps: k.maps.map((m) => ({ name: m.name, pin: m.pin_path, maxEntries: m.max_entries })) }));
          if (cmd.output === 'json') json(clusters);
          else io.out(clusters.length === 0 ? 'no cluster has joined\n' : table([['CLUSTER', 'MAPS'], ...clusters.map((k) => [String(k.clusterId), k.maps.map((m) => m.name).join(', ')])]));
        } else if (cmd.kind === 'cluster-create') {
          const res = await unary(c, 'ClusterCTMaps.CreateClusterCTMaps', cmd.server, c.CreateClusterCTMaps, { cluster_id: cmd.clusterId });
          if (cmd.output === 'json') json(res);
          else io.out(`cluster ${res.cluster_id}: ${res.maps.map((m) => m.name).join(', ')}\n`);
        } else {
          const res = await unary(c, 'ClusterCTMaps.DeleteClusterCTMaps', cmd.server, c.DeleteClusterCTMaps, { cluster_id: cmd.clusterId });
          if (cmd.output === 'json') json(res);
          else io.out(res.deleted ? `cluster ${cmd.clusterId}: maps deleted, ${res.dropped_entries} entries with them\n` : `cluster ${cmd.clusterId} had no maps\n`);
        }
        return 0;
      } finally {
        c.close();
      }
    }
  }
}
