/**
 * TC (clsact) attachment of BPF programs through libbpf's bpf_tc_* API
 * (bpf_tc_hook_create / bpf_tc_attach / bpf_tc_query / bpf_tc_detach /
 * bpf_tc_hook_destroy, libbpf >= 0.4; bindings and struct layouts in src/sys/native.ts).
 * Listing filters is rtnetlink's (./rtnetlink.ts): libbpf has no call for it.
 *
 * Everything acts in the network namespace of the calling thread, like `tc` itself: run
 * inside the namespace (nsenter --net) to act on its devices.
 *
 * libbpf >= 1.0 returns -errno from every bpf_tc_* call.
 */
import { BpfSyscallError, Errno, check } from '../sys/errors';
import { TC_HOOK, TC_OPTS, native } from '../sys/native';



/** The two clsact hooks. */
export type TcDirection = 'ingress' | 'egress';

/** enum bpf_tc_attach_point. */
const ATTACH_POINT: Record<TcDirection, number> = { ingress: 1 << 0, egress: 1 << 1 };
/** enum bpf_tc_flags. */
const BPF_TC_F_REPLACE = 1 << 0;

function hook(ifindex: number, points: number): Buffer {
  const b = Buffer.alloc(TC_HOOK.size);
  b.writeBigUInt64LE(BigInt(TC_HOOK.size), 0);
  b.writeInt32LE(ifindex, TC_HOOK.ifindex);
  b.writeInt32LE(points, TC_HOOK.attach_point);
  return b;
}

function opts(fields: { progFd?: number; flags?: number; handle?: number; priority?: number }): Buffer {
  const b = Buffer.alloc(TC_OPTS.size);
  b.writeBigUInt64LE(BigInt(TC_OPTS.size), 0);
  b.writeInt32LE(fields.progFd ?? 0, TC_OPTS.prog_fd);
  b.writeUInt32LE(fields.flags ?? 0, TC_OPTS.flags);
  b.writeUInt32LE(fields.handle ?? 0, TC_OPTS.handle);
  b.writeUInt32LE(fields.priority ?? 0, TC_OPTS.priority);
  return b;
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
  const ret = native.tcHookCreate(hook(ifindex, ATTACH_POINT.ingress | ATTACH_POINT.egress));
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
  const ret = native.tcHookDestroy(hook(ifindex, ATTACH_POINT.ingress | ATTACH_POINT.egress));
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
  check(`tc attach ${direction} ifindex ${ifindex}`, native.tcAttach(hook(ifindex, ATTACH_POINT[direction]), out));
  return { handle: out.readUInt32LE(TC_OPTS.handle), priority: out.readUInt32LE(TC_OPTS.priority), progId: out.readUInt32LE(TC_OPTS.prog_id) };
}

/**
 * bpf_tc_query: the id of the program the cls_bpf filter at handle/priority runs, or
 * undefined when there is no filter there (ENOENT) or it is not a cls_bpf filter (EINVAL:
 * the kernel refuses the kind). Throws BpfSyscallError for anything else.
 */
export function tcQuery(ifindex: number, direction: TcDirection, handle: number, priority: number): number | undefined {
  const out = opts({ handle, priority });
  const ret = native.tcQuery(hook(ifindex, ATTACH_POINT[direction]), out);
  if (ret === -Errno.ENOENT || ret === -Errno.EINVAL) return undefined;
  check(`tc query ${direction} ifindex ${ifindex}`, ret);
  return out.readUInt32LE(TC_OPTS.prog_id);
}

/**
 * bpf_tc_detach: removes the filter at handle/priority (whoever put it there: check with
 * tcQuery first). Returns false when there was none (ENOENT, or EINVAL when the qdisc is
 * gone).
 */
export function tcDetach(ifindex: number, direction: TcDirection, handle: number, priority: number): boolean {
  const ret = native.tcDetach(hook(ifindex, ATTACH_POINT[direction]), opts({ handle, priority }));
  if (ret === -Errno.ENOENT || ret === -Errno.EINVAL) return false;
  check(`tc detach ${direction} ifindex ${ifindex}`, ret);
  return true;
}
