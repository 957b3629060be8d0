/**
 * CT + SNAT states built by hand for the NAT coupling, purge and NATMaps tests. The NAT
 * keys and values here are derived from the CT key with the rules of ctmap-facts §4 and §6
 * written out again on text fields, independently of src/maps/nat, so a test compares the
 * code with the facts rather than with itself.
 */
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import type { Family } from '../../src/maps/addr';
import { CtKey, decodeKey, encodeEntry, encodeKey, keySize } from '../../src/maps/ctmap/codec';
import type { GCEvent } from '../../src/maps/ctmap/gc/types';
import { CtEntryFlag, IPPROTO } from '../../src/maps/ctmap/layout';
import type { CtKind } from '../../src/maps/ctmap/spec';
import { CtTables } from '../../src/maps/ctmap/tables';
import type { NatEntry } from '../../src/maps/nat/codec';
import { NatTables } from '../../src/maps/nat/tables';
import type { MapBackend } from '../../src/maps/types';

export const silentLog = pino({ level: 'silent' });

export interface Tables {
  ct: CtTables;
  nat: NatTables;
  root: string;
  close(): void;
}

/**
 * Opens CT and NAT tables on `backend` under `root` (a fresh /memory-test/... path for the
 * memory backend when omitted). close() closes both and, on the memory backend, unpins.
 */
export function openTables(backend: MapBackend, opts: { root?: string; ipv4?: boolean; ipv6?: boolean; size?: number; distributedLru?: boolean } = {}): Tables {
  const root = opts.root ?? `/memory-test/nat-${process.pid}-${randomBytes(4).toString('hex')}`;
  const size = opts.size ?? 4096;
  const base = { bpfRoot: root, enableIPv4: opts.ipv4 ?? true, enableIPv6: opts.ipv6 ?? true, distributedLru: opts.distributedLru ?? false };
  const ct = CtTables.openSync(backend, { ...base, ctTcpMax: size, ctAnyMax: size }, silentLog);
  const nat = NatTables.openSync(backend, { ...base, natMax: size }, silentLog);
  return {
    ct,
    nat,
    root,
    close() {
      nat.close();
      ct.close();
      if (backend.name === 'memory') {
        for (const name of ['cilium_ct4_global', 'cilium_ct_any4_global', 'cilium_ct6_global', 'cilium_ct_any6_global', 'cilium_snat_v4_external', 'cilium_snat_v6_external']) {
          backend.unpin(`${root}/tc/globals/${name}`);
        }
      }
    },
  };
}

export interface NatPair {
  out: { key: CtKey; entry: NatEntry };
  in: { key: CtKey; entry: NatEntry };
}

/**
 * The SNAT pair of an egress CT key K translated to `to` (facts §6 / §4):
 * OUT N = {saddr: K.daddr, daddr: K.saddr, sport: K.sport, dport: K.dport} -> to;
 * IN = {saddr: N.daddr, sport: N.dport, daddr: to.addr, dport: to.port, IN} -> {N.saddr, N.sport}.
 */
export function snatPair(k: CtKey, to: { addr: string; port: number }, created = 1000n): NatPair {
  const N: CtKey = { saddr: k.daddr, daddr: k.saddr, sport: k.sport, dport: k.dport, nexthdr: k.nexthdr, flags: 0 };
  return {
    out: { key: N, entry: { addr: to.addr, port: to.port, created, needsCt: true } },
    in: {
      key: { saddr: N.daddr, sport: N.dport, daddr: to.addr, dport: to.port, nexthdr: k.nexthdr, flags: 1 },
      entry: { addr: N.saddr, port: N.sport, created, needsCt: false },
    },
  };
}

/** The DSR swapped mapping of a CT key K: addresses as stored, ports exchanged, OUT. */
export function dsrKey(k: CtKey): CtKey {
  return { saddr: k.saddr, daddr: k.daddr, sport: k.dport, dport: k.sport, nexthdr: k.nexthdr, flags: 0 };
}

export function kindOf(k: CtKey): CtKind {
  return k.nexthdr === IPPROTO.TCP ? 'tcp' : 'any';
}

/** Writes CT entries (lifetime far in the future; entry flags as given). */
export function putCt(ct: CtTables, family: Family, entries: Array<{ key: CtKey; flags?: number }>): void {
  ct.update(
    entries.map((e) => ({ ref: { family, kind: kindOf(e.key), clusterId: 0 }, key: e.key, entry: { lifetime: 1_000_000, flags: e.flags ?? 0, packets: 1n } })),
    'records',
    entries.map(() => family),
  );
}

export function putNat(nat: NatTables, family: Family, entries: Array<{ key: CtKey; entry: NatEntry }>): void {
  nat.update(entries.map((e) => ({ family, clusterId: 0, key: e.key, entry: e.entry })));
}

/** Every key of the NAT map of `family`, as "daddr/saddr/dport/sport/nexthdr/flags" ids. */
export async function natKeyIds(nat: NatTables, family: Family): Promise<Set<string>> {
  const out = new Set<string>();
  const cursor = nat.dump(nat.get(family, 0));
  const ks = keySize(family);
  for (let b = await cursor.next(); b; b = await cursor.next()) {
    for (let i = 0; i < b.count; i++) out.add(keyId(decodeKey(family, b.keys, i * ks)));
  }
  return out;
}

export function keyId(k: CtKey): string {
  return `${k.daddr}/${k.saddr}/${k.dport}/${k.sport}/${k.nexthdr}/${k.flags}`;
}

let sequence = 0;

/** A GC event for a deleted CT entry of the global map (or of `clusterId`). */
export function gcEvent(family: Family, key: CtKey, entryFlags = 0, clusterId = 0): GCEvent {
  const k = Buffer.alloc(keySize(family));
  encodeKey(family, key, k);
  const e = Buffer.alloc(56);
  encodeEntry({ lifetime: 5, flags: entryFlags }, e);
  return { family, ref: { family, kind: kindOf(key), clusterId }, sequence: ++sequence, key: k, entry: e };
}

export const DSR = CtEntryFlag.DSRInternal;
