/**
 * TC (clsact) attachment of BPF programs: koffi bindings for libbpf's bpf_tc_* API
 * (bpf_tc_hook_create / bpf_tc_attach / bpf_tc_query / bpf_tc_detach /
 * bpf_tc_hook_destroy, libbpf >= 0.4, layouts as in /usr/include/bpf/libbpf.h of libbpf
 * 1.1), an rtnetlink filter dump (libbpf has no "list filters" call, and removing a
 * clsact qdisc safely needs one), interface name <-> index, and program info. Part of the
 * native boundary (src/maps/bpf/): nothing outside this directory imports koffi.
 *
 * Everything acts in the network namespace of the calling thread, like `tc` itself: run
 * inside the namespace (nsenter --net) to act on its devices.
 *
 * libbpf >= 1.0 returns -errno from every bpf_tc_* call.
 */
import koffi from 'koffi';
import { BpfSyscallError, Errno } from './errors';
import { Fd } from './index';
import { native as bpfNative } from './libbpf';

const lib = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

/** struct bpf_tc_hook (libbpf.h): sz, ifindex, enum attach_point, parent; padded to 8. */
const TcHook = koffi.struct('ctmapd_bpf_tc_hook', {
  sz: 'size_t',
  ifindex: 'int',
  attach_point: 'int',
  parent: 'uint32_t',
});
/** struct bpf_tc_opts (libbpf.h): sz, prog_fd, flags, prog_id, handle, priority; padded to 8. */
const TcOpts = koffi.struct('ctmapd_bpf_tc_opts', {
  sz: 'size_t',
  prog_fd: 'int',
  flags: 'uint32_t',
  prog_id: 'uint32_t',
  handle: 'uint32_t',
  priority: 'uint32_t',
});
const HOOK_SIZE = koffi.sizeof(TcHook);
const HOOK_IFINDEX = koffi.offsetof(TcHook, 'ifindex');
const HOOK_ATTACH_POINT = koffi.offsetof(TcHook, 'attach_point');
const OPTS_SIZE = koffi.sizeof(TcOpts);
const OPTS_PROG_FD = koffi.offsetof(TcOpts, 'prog_fd');
const OPTS_FLAGS = koffi.offsetof(TcOpts, 'flags');
const OPTS_PROG_ID = koffi.offsetof(TcOpts, 'prog_id');
const OPTS_HANDLE = koffi.offsetof(TcOpts, 'handle');
const OPTS_PRIORITY = koffi.offsetof(TcOpts, 'priority');

const native = {
  hookCreate: lib.func('int bpf_tc_hook_create(void *hook)') as (hook: Buffer) => number,
  hookDestroy: lib.func('int bpf_tc_hook_destroy(void *hook)') as (hook: Buffer) => number,
  attach: lib.func('int bpf_tc_attach(const void *hook, void *opts)') as (hook: Buffer, opts: Buffer) => number,
  detach: lib.func('int bpf_tc_detach(const void *hook, const void *opts)') as (hook: Buffer, opts: Buffer) => number,
  query: lib.func('int bpf_tc_query(const void *hook, void *opts)') as (hook: Buffer, opts: Buffer) => number,
  ifNameToIndex: libc.func('unsigned int if_nametoindex(const char *ifname)') as (name: string) => number,
  ifIndexToName: libc.func('const char *if_indextoname(unsigned int ifindex, void *ifname)') as (index: number, buf: Buffer) => string | null,
  socket: libc.func('int socket(int domain, int type, int protocol)') as (domain: number, type: number, protocol: number) => number,
  send: libc.func('intptr_t send(int fd, const void *buf, size_t len, int flags)') as (fd: number, buf: Buffer, len: number, flags: number) => number,
  recv: libc.func('intptr_t recv(int fd, void *buf, size_t len, int flags)') as (fd: number, buf: Buffer, len: number, flags: number) => number,
};

/** The two clsact hooks. */
export type TcDirection = 'ingress' | 'egress';

/** enum bpf_tc_attach_point. */
const ATTACH_POINT: Record<TcDirection, number> = { ingress: 1 << 0, egress: 1 << 1 };
/** enum bpf_tc_flags. */
const BPF_TC_F_REPLACE = 1 << 0;

function hook(ifindex: number, points: number): Buffer {
  const b = Buffer.alloc(HOOK_SIZE);
  b.writeBigUInt64LE(BigInt(HOOK_SIZE), 0);
  b.writeInt32LE(ifindex, HOOK_IFINDEX);
  b.writeInt32LE(points, HOOK_ATTACH_POINT);
  return b;
}

function opts(fields: { progFd?: number; flags?: number; handle?: number; priority?: number }): Buffer {
  const b = Buffer.alloc(OPTS_SIZE);
  b.writeBigUInt64LE(BigInt(OPTS_SIZE), 0);
  b.writeInt32LE(fields.progFd ?? 0, OPTS_PROG_FD);
  b.writeUInt32LE(fields.flags ?? 0, OPTS_FLAGS);
  b.writeUInt32LE(fields.handle ?? 0, OPTS_HANDLE);
  b.writeUInt32LE(fields.priority ?? 0, OPTS_PRIORITY);
  return b;
}

function check(op: string, ret: number): number {
  if (ret < 0) throw new BpfSyscallError(op, -ret);
  return ret;
}

/**
 * Creates the clsact qdisc on `ifindex` (both hooks live in it). Returns true when this
 * call created it, false when a clsact qdisc was there already (EEXIST) — the answer an
 * owner must remember to know whether the qdisc is its to remove. Ask tcHasClsact first:
 * on EEXIST libbpf prints the kernel's complaint to stderr. Throws BpfSyscallError
 * (ENODEV: no such device; EEXIST is not thrown, but another qdisc at the ingress handle,
 * such as `ingress`, also answers EEXIST and then attach fails).
 */
export function tcHookCreate(ifindex: number): boolean {
  const ret = native.hookCreate(hook(ifindex, ATTACH_POINT.ingress | ATTACH_POINT.egress));
  if (ret === -Errno.EEXIST) return false;
  check(`tc hook create ifindex ${ifindex}`, ret);
  return true;
}

/**
 * Deletes the clsact qdisc of `ifindex`, and with it every filter on both hooks: call only
 * when the qdisc is the caller's and tcListFilters showed nothing else on it. Returns
 * false when there was no clsact qdisc (ENOENT / EINVAL from the kernel).
 *
 * Deliberately no binding for bpf_tc_hook_destroy on one hook alone: libbpf implements it
 * as "flush every filter on that hook", foreign ones included.
 */
export function tcHookDestroy(ifindex: number): boolean {
  const ret = native.hookDestroy(hook(ifindex, ATTACH_POINT.ingress | ATTACH_POINT.egress));
  if (ret === -Errno.ENOENT || ret === -Errno.EINVAL) return false;
  check(`tc hook destroy ifindex ${ifindex}`, ret);
  return true;
}

/** Where a tc filter sits on a hook, and the program it runs. */
export interface TcFilterRef {
  readonly handle: number;
  readonly priority: number;
  readonly progId: number;
}

export interface TcAttachOptions {
  /**
   * 0 (default) lets the kernel pick: priority 49152, or one below the lowest priority in
   * use above 32768 (tcf_auto_prio); handle 1 up.
   */
  readonly handle?: number;
  readonly priority?: number;
  /**
   * Replace the filter at handle/priority (both required) in place, atomically. Without
   * it, an existing filter at a given handle/priority is an EEXIST error.
   */
  readonly replace?: boolean;
}

/**
 * bpf_tc_attach: a direct-action cls_bpf filter (protocol all) running `progFd` on the
 * clsact hook `direction` of `ifindex`. Returns where the kernel put it. Throws
 * BpfSyscallError: EEXIST (taken handle/priority without replace), EINVAL (no clsact
 * qdisc, or a foreign filter kind at that priority), ENODEV.
 */
export function tcAttach(ifindex: number, direction: TcDirection, progFd: number, o: TcAttachOptions = {}): TcFilterRef {
  if (o.replace && !(o.handle && o.priority)) {
    throw new BpfSyscallError('tc attach: replace needs a handle and a priority', Errno.EINVAL);
  }
  const out = opts({ progFd, flags: o.replace ? BPF_TC_F_REPLACE : 0, handle: o.handle, priority: o.priority });
  check(`tc attach ${direction} ifindex ${ifindex}`, native.attach(hook(ifindex, ATTACH_POINT[direction]), out));
  return { handle: out.readUInt32LE(OPTS_HANDLE), priority: out.readUInt32LE(OPTS_PRIORITY), progId: out.readUInt32LE(OPTS_PROG_ID) };
}

/**
 * bpf_tc_query: the id of the program the cls_bpf filter at handle/priority runs, or
 * undefined when there is no filter there (ENOENT) or it is not a cls_bpf filter (EINVAL:
 * the kernel refuses the kind). Throws BpfSyscallError for anything else.
 */
export function tcQuery(ifindex: number, direction: TcDirection, handle: number, priority: number): number | undefined {
  const out = opts({ handle, priority });
  const ret = native.query(hook(ifindex, ATTACH_POINT[direction]), out);
  if (ret === -Errno.ENOENT || ret === -Errno.EINVAL) return undefined;
  check(`tc query ${direction} ifindex ${ifindex}`, ret);
  return out.readUInt32LE(OPTS_PROG_ID);
}

/**
 * bpf_tc_detach: removes the filter at handle/priority (whoever put it there: check with
 * tcQuery first). Returns false when there was none (ENOENT, or EINVAL when the qdisc is
 * gone).
 */
export function tcDetach(ifindex: number, direction: TcDirection, handle: number, priority: number): boolean {
  const ret = native.detach(hook(ifindex, ATTACH_POINT[direction]), opts({ handle, priority }));
  if (ret === -Errno.ENOENT || ret === -Errno.EINVAL) return false;
  check(`tc detach ${direction} ifindex ${ifindex}`, ret);
  return true;
}

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
  if (sock < 0) throw new BpfSyscallError('netlink socket', koffi.errno() || Errno.EINVAL);
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
    if (native.send(fd.value, req, req.length, 0) < 0) throw new BpfSyscallError('netlink send', koffi.errno() || Errno.EINVAL);

    const out: NlMessage[] = [];
    const buf = Buffer.alloc(64 * 1024);
    for (;;) {
      const n = native.recv(fd.value, buf, buf.length, 0);
      if (n < 0) throw new BpfSyscallError('netlink recv', koffi.errno() || Errno.EINVAL);
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

/** if_nametoindex in this thread's network namespace; undefined for no such device. */
export function ifNameToIndex(name: string): number | undefined {
  if (name.length === 0 || name.length > 15 || name.includes('\0')) return undefined;
  const index = native.ifNameToIndex(name);
  return index === 0 ? undefined : index;
}

/** if_indextoname in this thread's network namespace; undefined for no such device. */
export function ifIndexToName(index: number): string | undefined {
  // IF_NAMESIZE; the returned string is a copy of what libc wrote into buf.
  const name = native.ifIndexToName(index, Buffer.alloc(16));
  return name === null ? undefined : name;
}

export interface ProgInfo {
  readonly type: number;
  readonly id: number;
  readonly name: string;
}

/** BPF_OBJ_GET_INFO_BY_FD for a program (struct bpf_prog_info: type, id, name). */
export function progInfo(fd: Fd | number): ProgInfo {
  const info = Buffer.alloc(232);
  const len = new Uint32Array([info.length]);
  check('prog info', bpfNative.objGetInfoByFd(typeof fd === 'number' ? fd : fd.value, info, len));
  // name[BPF_OBJ_NAME_LEN] at offset 64 (after tag, lengths, pointers, load time, uid, map ids).
  const nameBytes = info.subarray(64, 80);
  const nul = nameBytes.indexOf(0);
  return { type: info.readUInt32LE(0), id: info.readUInt32LE(4), name: nameBytes.subarray(0, nul < 0 ? 16 : nul).toString('latin1') };
}

/**
 * BPF_OBJ_PIN of a program fd someone else owns (a BpfProgram's): the pin keeps the
 * program loaded after that owner closes it. The parent directory must exist on bpffs.
 * Throws BpfSyscallError (EEXIST: something is pinned there already).
 */
export function pinProgram(progFd: number, pinPath: string): void {
  check(`obj pin ${pinPath}`, bpfNative.objPin(progFd, pinPath));
}
