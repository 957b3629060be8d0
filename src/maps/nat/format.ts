/**
 * The `cilium bpf nat list` text of one SNAT entry (Cilium's TupleKey4Global/6Global.Dump
 * followed by NatEntry4/6.Dump, pkg/tuple and pkg/maps/nat):
 *
 *   TCP OUT 10.0.0.1:40000 -> 1.1.1.1:80 XLATE_SRC 192.168.1.1:40000 Created=120sec ago NeedsCT=1
 *
 * A NAT key is not stored swapped the way a CT key is: it prints saddr:sport -> daddr:dport
 * as stored. IN entries say XLATE_DST (the value is the original address); the key's
 * related / service flags follow the tuple as in `ct list`; IPv6 endpoints are [addr]:port.
 */
import type { Family } from '../addr';
import type { CtKey } from '../ctmap/codec';
import { TupleFlag } from '../ctmap/layout';
import { protoName } from '../ctmap/format';
import type { NatEntry } from './codec';

/**
 * One line, with its newline, for the entry `key` -> `entry` of the NAT map of `family`;
 * `ageSeconds` is the CT clock now minus entry.created (NatEntry.age_seconds). Returns ''
 * for nexthdr 0, which Cilium skips.
 */
export function formatNatLine(family: Family, key: CtKey, entry: NatEntry, ageSeconds: bigint | number): string {
  if (key.nexthdr === 0) return '';
  const ep = (a: string, p: number): string => (family === 'ipv6' ? `[${a}]:${p}` : `${a}:${p}`);
  const inbound = (key.flags & TupleFlag.IN) !== 0;
  let line = `${protoName(key.nexthdr)} ${inbound ? 'IN' : 'OUT'} ${ep(key.saddr, key.sport)} -> ${ep(key.daddr, key.dport)} `;
  if (key.flags & TupleFlag.RELATED) line += 'related ';
  if (key.flags & TupleFlag.SERVICE) line += 'service ';
  return `${line}XLATE_${inbound ? 'DST' : 'SRC'} ${ep(entry.addr, entry.port)} Created=${ageSeconds}sec ago NeedsCT=${entry.needsCt ? 1 : 0}\n`;
}
