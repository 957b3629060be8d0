/**
 * What a daemon started with default flags (and `extra` flags) would pin under a bpf-root,
 * made with ctmapd's own code, for benches that load the datapath over it without running
 * a daemon: the global and per-cluster CT maps at the flags' sizes, and the datapath's side
 * maps (counters, settings, event ring, fill-up steps). Closed by the bench's cleanup.
 */
import pino from 'pino';
import { parseConfig } from '../src/config/config';
import { datapathSettingsFrom } from '../src/datapath/settings';
import { DatapathSideMaps, eventSideMapOptionsFrom } from '../src/datapath/side-maps';
import { clusterOuterCtMapSpec, CtMapsConfig, globalCtMapSpec } from '../src/maps/ctmap/spec';
import { kernelBackend } from '../src/maps/kernel';
import type { BenchContext } from './lib';

/** The CT maps' configuration the daemon derives from `flags` on `bpfRoot`. */
export function ctMapsConfigOf(bpfRoot: string, flags: readonly string[] = []): CtMapsConfig {
  const f = parseConfig(['--bpf-root', bpfRoot, ...flags], {});
  return {
    bpfRoot,
    enableIPv4: f.enableIpv4,
    enableIPv6: f.enableIpv6,
    ctTcpMax: f.bpfCtGlobalTcpMax,
    ctAnyMax: f.bpfCtGlobalAnyMax,
    distributedLru: f.bpfDistributedLru,
    clusterIdMax: f.maxConnectedClusters,
  };
}

/** Creates and pins the daemon's maps under `bpfRoot` for `flags`; returns its side maps. */
export function pinDaemonMaps(ctx: BenchContext, bpfRoot: string, flags: readonly string[] = []): DatapathSideMaps {
  const cfg = ctMapsConfigOf(bpfRoot, flags);
  for (const family of ['ipv4', 'ipv6'] as const) {
    for (const kind of ['tcp', 'any'] as const) {
      for (const spec of [globalCtMapSpec(cfg, family, kind), clusterOuterCtMapSpec(cfg, family, kind)]) {
        const map = kernelBackend.create(spec);
        ctx.cleanup.add(`close ${spec.pinPath}`, () => map.close());
      }
    }
  }
  const config = parseConfig(['--bpf-root', bpfRoot, ...flags], {});
  const side = DatapathSideMaps.open(kernelBackend, bpfRoot, datapathSettingsFrom(config), pino({ level: 'silent' }), eventSideMapOptionsFrom(config));
  ctx.cleanup.add(`close side maps ${bpfRoot}`, () => side.close());
  return side;
}
