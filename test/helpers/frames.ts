/**
 * Crafted Ethernet frames for BPF_PROG_TEST_RUN of the TC datapath (tests and the bench):
 * IPv4 / IPv6 (with optional extension headers) carrying TCP, UDP or ICMP(v6). Checksums
 * are left 0: the datapath does not verify them.
 */
import { writeAddress } from '../../src/maps/addr';

/** TCP flag bits (byte 13 of the header). */
export const TCP_FLAGS = { FIN: 0x01, SYN: 0x02, RST: 0x04, ACK: 0x10 } as const;

/** An Ethernet header (fixed locally administered MACs) with `etherType`, then `payload`. */
export function eth(etherType: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(14);
  h.write('020000000001', 0, 'hex');
  h.write('020000000002', 6, 'hex');
  h.writeUInt16BE(etherType, 12);
  return Buffer.concat([h, payload]);
}

/** An IPv4 or IPv6 packet in an Ethernet frame; `ext` are IPv6 extension headers (type, 8-byte body). */
export function ip(src: string, dst: string, proto: number, l4: Buffer, ext: number[] = []): Buffer {
  if (!src.includes(':')) {
    const h = Buffer.alloc(20);
    h[0] = 0x45;
    h.writeUInt16BE(20 + l4.length, 2);
    h[8] = 64;
    h[9] = proto;
    writeAddress('ipv4', src, h, 12);
    writeAddress('ipv4', dst, h, 16);
    return eth(0x0800, Buffer.concat([h, l4]));
  }
  // Each extension header is 8 bytes (hdr ext len 0) and names the next one.
  const chain = [...ext, proto];
  const exts = ext.map((_, i) => {
    const b = Buffer.alloc(8);
    b[0] = chain[i + 1];
    return b;
  });
  const body = Buffer.concat([...exts, l4]);
  const h = Buffer.alloc(40);
  h[0] = 0x60;
  h.writeUInt16BE(body.length, 4);
  h[6] = chain[0];
  h[7] = 64;
  writeAddress('ipv6', src, h, 8);
  writeAddress('ipv6', dst, h, 24);
  return eth(0x86dd, Buffer.concat([h, body]));
}

export function tcp(sport: number, dport: number, flags: number): Buffer {
  const h = Buffer.alloc(20);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h[12] = 5 << 4;
  h[13] = flags;
  return h;
}

export function udp(sport: number, dport: number, payload: Buffer = Buffer.alloc(8)): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt16BE(sport, 0);
  h.writeUInt16BE(dport, 2);
  h.writeUInt16BE(8 + payload.length, 4);
  return Buffer.concat([h, payload]);
}

/** ICMP(v6): type, code, checksum 0, then the id (echo) or unused word, then `payload`. */
export function icmp(type: number, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(8);
  h[0] = type;
  h.writeUInt16BE(id, 4);
  return Buffer.concat([h, payload]);
}

/** The IP packet inside a frame (what an ICMP error quotes). */
export function quote(frame: Buffer): Buffer {
  return frame.subarray(14);
}
