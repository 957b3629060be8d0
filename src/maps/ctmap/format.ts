/**
 * The `cilium bpf ct list global` text (ctmap-facts §7): one line per entry, entries with
 * nexthdr 0 skipped, the address swap undone (src = key.daddr, dst = key.saddr), ports by
 * their key names in host order, IPv6 as [addr]:port.
 */
import { Family, formatAddress } from '../addr';
import { CT_ENTRY_BACKEND_ID_OFFSET, CT_ENTRY, IPPROTO, TupleFlag } from './layout';
import { entryFlagNames } from './codec';
import { keyLayout } from './codec';

const E = CT_ENTRY.fields;


/** The protocol name Cilium prints for `nexthdr` (u8proto), or its number. */
export function protoName(nexthdr: number): string {
  switch (nexthdr) {
    case IPPROTO.TCP:
      return 'TCP';
    case IPPROTO.UDP:
      return 'UDP';
    case IPPROTO.ICMP:
      return 'ICMP';
    case IPPROTO.ICMPV6:
      return 'ICMPv6';
    default:
      return String(nexthdr);
  }
}

function hex(n: number, digits: number): string {
  return `0x${n.toString(16).padStart(digits, '0')}`;
}

/**
 * Formats the entry whose key is at keys[koff..] and value at values[voff..]. Returns ''
 * for nexthdr 0 (Cilium skips such keys). With `now`, adds "(remaining: N sec(s)) ".
 */
export function formatEntryLine(family: Family, keys: Buffer, koff: number, values: Buffer, voff: number, now?: number): string {
  const L = keyLayout(family).fields;
  const nexthdr = keys[koff + L.nexthdr.offset];
  if (nexthdr === 0) return '';
  const tflags = keys[koff + L.flags.offset];
  const src = formatAddress(family, keys, koff + L.daddr.offset);
  const dst = formatAddress(family, keys, koff + L.saddr.offset);
  const sport = keys.readUInt16BE(koff + L.sport.offset);
  const dport = keys.readUInt16BE(koff + L.dport.offset);
  const ep = (a: string, p: number): string => (family === 'ipv6' ? `[${a}]:${p}` : `${a}:${p}`);

  const lifetime = values.readUInt32LE(voff + E.lifetime.offset);
  const flags = values.readUInt16LE(voff + E.flags.offset);
  const names = entryFlagNames(flags);
  let line = `${protoName(nexthdr)} ${tflags & TupleFlag.IN ? 'IN' : 'OUT'} ${ep(src, sport)} -> ${ep(dst, dport)} `;
  if (tflags & TupleFlag.RELATED) line += 'related ';
  if (tflags & TupleFlag.SERVICE) line += 'service ';
  line += `expires=${lifetime} `;
  if (now !== undefined) line += `(remaining: ${lifetime - now} sec(s)) `;
  line +=
    `Packets=${values.readBigUInt64LE(voff + E.packets.offset)} ` +
    `Bytes=${values.readBigUInt64LE(voff + E.bytes.offset)} ` +
    `RxFlagsSeen=${hex(values[voff + E.rx_flags_seen.offset], 2)} ` +
    `LastRxReport=${values.readUInt32LE(voff + E.last_rx_report.offset)} ` +
    `TxFlagsSeen=${hex(values[voff + E.tx_flags_seen.offset], 2)} ` +
    `LastTxReport=${values.readUInt32LE(voff + E.last_tx_report.offset)} ` +
    `Flags=${hex(flags, 4)} [ ${names.map((n) => `${n} `).join('')}] ` +
    `RevNAT=${values.readUInt16BE(voff + E.rev_nat_index.offset)} ` +
    `SourceSecurityID=${values.readUInt32LE(voff + E.src_sec_id.offset)} ` +
    `BackendID=${values.readBigUInt64LE(voff + E.union0.offset + CT_ENTRY_BACKEND_ID_OFFSET)} ` +
    `NatPort=${values.readUInt16BE(voff + E.nat_port.offset)}\n`;
  return line;
}
