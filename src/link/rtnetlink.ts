/**
 * An rtnetlink dump of a device's tc filters and qdiscs: what `tc filter show` and `tc qdisc
 * show` print. libbpf has no "list filters" call, and removing a clsact qdisc safely needs
 * one (src/datapath/attach.ts removes a qdisc only when nothing else is attached to it).
 * Everything acts in the network namespace of the calling thread.
 */
import { BpfSyscallError, Errno } from '../sys/errors';
import { Fd } from '../sys/fd';
import { lastErrno, native } from '../sys/native';
import type { TcDirection } from './tc';

/** One line of `tc filter show dev X ingress|egress`. */
export interface TcFilterInfo {
  /** 0 on the line that stands for a classifier instance (a priority) itself. */
  readonly handle: number;
  readonly priority: number;
  /** ETH_P_* in host order (0x0003 = all). */
  readonly protocol: number;
  /** Classifier kind: bpf, flower, matchall, u32, ... */
  readonly kind: string;
  readonly chain: number;
}

// rtnetlink constants (linux/netlink.h, linux/rtnetlink.h, linux/pkt_sched.h).
const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_ROUTE = 0;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const RTM_NEWQDISC = 36;
const RTM_GETQDISC = 38;
const RTM_NEWTFILTER = 44;
const RTM_GETTFILTER = 46;
const NLMSG_HDRLEN = 16;
const TCMSG_LEN = 20;
const TCA_KIND = 1;
const TCA_CHAIN = 11;
/** The parent of the clsact (and ingress) qdisc. */
const TC_H_INGRESS = 0xfffffff1;
/** TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS / TC_H_MIN_EGRESS). */
const CLSACT_PARENT: Record<TcDirection, number> = { ingress: 0xfffffff2, egress: 0xfffffff3 };

let nlSeq = 1;

/** One rtnetlink message of a dump: its type and payload (after struct nlmsghdr). */
interface NlMessage {
  readonly type: number;
  readonly payload: Buffer;
}

/**
 * An rtnetlink dump request with a struct tcmsg (ifindex, parent) as its body; returns
 * every message up to NLMSG_DONE. Throws BpfSyscallError when netlink fails.
 */
function tcDump(what: string, type: number, ifindex: number, parent: number): NlMessage[] {
  const sock = native.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (sock < 0) throw new BpfSyscallError('netlink socket', lastErrno());
  const fd = new Fd(sock, 'netlink socket');
  try {
    const seq = nlSeq++;
    const req = Buffer.alloc(NLMSG_HDRLEN + TCMSG_LEN);
    req.writeUInt32LE(req.length, 0);
    req.writeUInt16LE(type, 4);
    req.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
    req.writeUInt32LE(seq, 8);
    // tcmsg: family AF_UNSPEC, ifindex, handle 0, parent, info 0.
    req.writeInt32LE(ifindex, NLMSG_HDRLEN + 4);
    req.writeUInt32LE(parent, NLMSG_HDRLEN + 12);
    if (native.send(fd.value, req, req.length, 0) < 0) throw new BpfSyscallError('netlink send', lastErrno());

    const out: NlMessage[] = [];
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = native.recv(fd.value, buf, buf.length, 0);
      if (n < 0) throw new BpfSyscallError('netlink recv', lastErrno());
      if (n === 0) throw new BpfSyscallError('netlink recv: closed before the dump ended', Errno.EINVAL);
      for (let off = 0; off + NLMSG_HDRLEN <= n; ) {
        const len = buf.readUInt32LE(off);
        const msgType = buf.readUInt16LE(off + 4);
        if (len < NLMSG_HDRLEN || off + len > n) throw new BpfSyscallError('netlink: truncated message', Errno.EINVAL);
        if (buf.readUInt32LE(off + 8) === seq) {
          if (msgType === NLMSG_DONE) return out;
          if (msgType === NLMSG_ERROR) {
            const err = -buf.readInt32LE(off + NLMSG_HDRLEN);
            if (err !== 0) throw new BpfSyscallError(what, err);
          } else {
            // Copied: buf is reused by the next recv.
            out.push({ type: msgType, payload: Buffer.from(buf.subarray(off + NLMSG_HDRLEN, off + len)) });
          }
        }
        off += (len + 3) & ~3;
      }
    }
  } finally {
    fd.close();
  }
}

/** The attributes of a tc message (after struct tcmsg) this module reads. */
function tcAttrs(payload: Buffer): { kind: string; chain: number } {
  let kind = '';
  let chain = 0;
  for (let off = TCMSG_LEN; off + 4 <= payload.length; ) {
    const len = payload.readUInt16LE(off);
    const type = payload.readUInt16LE(off + 2) & 0x3fff;
    if (len < 4) break;
    const data = payload.subarray(off + 4, off + len);
    if (type === TCA_KIND) kind = data.toString('latin1').replace(/\0.*$/s, '');
    if (type === TCA_CHAIN && data.length >= 4) chain = data.readUInt32LE(0);
    off += (len + 3) & ~3;
  }
  return { kind, chain };
}

/**
 * Every filter on the clsact hook `direction` of `ifindex`, all chains: an RTM_GETTFILTER
 * dump, what `tc filter show dev X ingress` prints. Empty when the device has no clsact
 * qdisc. Throws BpfSyscallError when netlink fails.
 */
export function tcListFilters(ifindex: number, direction: TcDirection): TcFilterInfo[] {
  return tcDump(`tc filter dump ${direction} ifindex ${ifindex}`, RTM_GETTFILTER, ifindex, CLSACT_PARENT[direction])
    .filter((m) => m.type === RTM_NEWTFILTER)
    .map((m) => {
      const info = m.payload.readUInt32LE(16);
      // tcm_info = TC_H_MAKE(prio << 16, htons(protocol)).
      const protocol = ((info & 0xff) << 8) | ((info >> 8) & 0xff);
      return { handle: m.payload.readUInt32LE(8), priority: info >>> 16, protocol, ...tcAttrs(m.payload) };
    });
}

/**
 * Whether `ifindex` has a clsact qdisc (an RTM_GETQDISC dump, what `tc qdisc show dev X`
 * prints). Asked before tcHookCreate so that an existing qdisc is not an error libbpf
 * reports on stderr. Throws BpfSyscallError when netlink fails.
 */
export function tcHasClsact(ifindex: number): boolean {
  return tcDump(`tc qdisc dump ifindex ${ifindex}`, RTM_GETQDISC, ifindex, 0).some(
    (m) => m.type === RTM_NEWQDISC && m.payload.readInt32LE(4) === ifindex && m.payload.readUInt32LE(12) === TC_H_INGRESS && tcAttrs(m.payload).kind === 'clsact',
  );
}
