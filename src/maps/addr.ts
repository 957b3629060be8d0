/**
 * IP address text <-> network-order bytes, without allocation on the write path.
 * Formatting follows RFC 5952 (lowercase, longest zero run compressed) so that dumps match
 * what `ip`, Go's netip and Cilium print.
 */
import { isIPv4, isIPv6 } from 'node:net';

export type Family = 'ipv4' | 'ipv6';

/** Family of an address string, or undefined when it is not a valid IP address. */
export function addressFamily(text: string): Family | undefined {
  if (isIPv4(text)) return 'ipv4';
  if (isIPv6(text) && !text.includes('%')) return 'ipv6';
  return undefined;
}

/** Writes a valid IPv4 address (dotted quad) at buf[off..off+4). */
export function writeIPv4(text: string, buf: Buffer, off: number): void {
  writeDottedQuad(text, 0, buf, off);
}

/** The dotted quad at text[from..] into buf[off..off+4): digit by digit, no split (match_ips lists run to 65,536). */
function writeDottedQuad(text: string, from: number, buf: Buffer, off: number): void {
  let v = 0;
  for (let i = from; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x2e) {
      buf[off++] = v;
      v = 0;
    } else v = v * 10 + c - 0x30;
  }
  buf[off] = v;
}

/**
 * Writes a valid IPv6 address (any RFC 4291 text form, incl. embedded IPv4) at
 * buf[off..off+16), in one pass over the characters: the groups are written in order, and
 * those after a "::" are then moved to the end, with zeros in the gap.
 */
export function writeIPv6(text: string, buf: Buffer, off: number): void {
  // An embedded IPv4 tail starts after the last ':'.
  const dotted = text.indexOf('.') >= 0;
  const end = dotted ? text.lastIndexOf(':') + 1 : text.length;
  let pos = off;
  let gap = -1;
  let group = 0;
  let digits = 0;
  for (let i = 0; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x3a) {
      if (digits > 0) {
        buf[pos++] = group >> 8;
        buf[pos++] = group & 0xff;
        group = 0;
        digits = 0;
      }
      if (text.charCodeAt(i + 1) === 0x3a) {
        gap = pos;
        i++;
      }
    } else {
      // 0-9, A-F, a-f: text is valid.
      group = (group << 4) | (c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x57);
      digits++;
    }
  }
  if (digits > 0) {
    buf[pos++] = group >> 8;
    buf[pos++] = group & 0xff;
  }
  if (dotted) {
    writeDottedQuad(text, end, buf, pos);
    pos += 4;
  }
  if (gap >= 0) {
    const tail = pos - gap;
    const to = off + 16 - tail;
    for (let k = tail - 1; k >= 0; k--) buf[to + k] = buf[gap + k];
    for (let k = gap; k < to; k++) buf[k] = 0;
  }
}

export function formatIPv4(buf: Buffer, off: number): string {
  return `${buf[off]}.${buf[off + 1]}.${buf[off + 2]}.${buf[off + 3]}`;
}

export function formatIPv6(buf: Buffer, off: number): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push(buf.readUInt16BE(off + i * 2));
  // IPv4-mapped addresses print with a dotted tail, as Go and glibc do.
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return `::ffff:${formatIPv4(buf, off + 12)}`;
  }
  let bestStart = -1;
  let bestLen = 1; // a single zero group is not compressed (RFC 5952 §4.2.2)
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (a: number[]): string => a.map((x) => x.toString(16)).join(':');
  if (bestStart < 0) return hex(g);
  return `${hex(g.slice(0, bestStart))}::${hex(g.slice(bestStart + bestLen))}`;
}

export function formatAddress(family: Family, buf: Buffer, off: number): string {
  return family === 'ipv4' ? formatIPv4(buf, off) : formatIPv6(buf, off);
}

export function writeAddress(family: Family, text: string, buf: Buffer, off: number): void {
  if (family === 'ipv4') writeIPv4(text, buf, off);
  else writeIPv6(text, buf, off);
}

/** Parses a valid address of either family into a new buffer (4 or 16 bytes). */
export function addressBytes(text: string): { family: Family; bytes: Buffer } | undefined {
  const family = addressFamily(text);
  if (!family) return undefined;
  const bytes = Buffer.alloc(family === 'ipv4' ? 4 : 16);
  writeAddress(family, text, bytes, 0);
  return { family, bytes };
}
