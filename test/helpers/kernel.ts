/**
 * Kernel test-tier policy, shared by every kernel and e2e test (ARCHITECTURE.md, "Test
 * tiers"): a tier that cannot run says so in one loud line and is skipped; with
 * CTMAPD_REQUIRE_KERNEL=1 (CI on a privileged runner) it fails instead, so a broken probe can
 * never silently turn the kernel tier off.
 *
 * src/maps/kernel and src/sys load koffi and libbpf.so.1 at import time, so they are
 * required lazily: on a machine without libbpf this module still loads and reports why.
 */
import { AssertionError } from 'node:assert';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TestContext } from 'node:test';

type KernelModule = typeof import('../../src/maps/kernel');
type BpfModule = typeof import('../../src/sys');

/** statfs f_type of bpffs (BPF_FS_MAGIC in linux/magic.h). */
export const BPF_FS_MAGIC = 0xcafe4a11;
export const DEFAULT_BPFFS = '/sys/fs/bpf';

/** CAP_BPF (Linux >= 5.8) lets a non-root process create maps and load programs. */
const CAP_BPF = 39n;

export type KernelTierDecision = { readonly run: true } | { readonly run: false; readonly fail: boolean; readonly reason: string };

let decided: KernelTierDecision | undefined;

/**
 * Whether the kernel tier runs in this process, decided once: run when root (or CAP_BPF) and
 * probeKernel() can create a map; otherwise fail when CTMAPD_REQUIRE_KERNEL=1, else skip.
 * On skip it prints `*** KERNEL TIER SKIPPED: <reason> ***` to stderr, once per process.
 * Use at registration time (to decide whether to register kernel tests at all); inside a
 * test use kernelTier(t).
 */
export function kernelTierDecision(): KernelTierDecision {
  if (decided) return decided;
  const reason = whyKernelTierCannotRun();
  if (reason === undefined) {
    decided = { run: true };
  } else {
    decided = { run: false, fail: process.env.CTMAPD_REQUIRE_KERNEL === '1', reason };
    if (!decided.fail) process.stderr.write(`*** KERNEL TIER SKIPPED: ${reason} ***\n`);
  }
  return decided;
}

/**
 * Guard for a kernel-tier test: `if (!kernelTier(t)) return;` at the top of the test.
 * Returns true when the tier runs. Otherwise skips the test (t.skip, returns false), or, with
 * CTMAPD_REQUIRE_KERNEL=1, throws so the test fails with the reason.
 */
export function kernelTier(t: Pick<TestContext, 'skip'>): boolean {
  const d = kernelTierDecision();
  if (d.run) return true;
  if (d.fail) throw new Error(`kernel tier required (CTMAPD_REQUIRE_KERNEL=1) but cannot run: ${d.reason}`);
  t.skip(`kernel tier skipped: ${d.reason}`);
  return false;
}

function whyKernelTierCannotRun(): string | undefined {
  if (!isPrivileged()) return `not root and no CAP_BPF (uid ${process.getuid?.() ?? '?'})`;
  let kernel: KernelModule;
  try {
    kernel = require('../../src/maps/kernel') as KernelModule;
  } catch (err) {
    return `cannot load the kernel backend (libbpf.so.1 / koffi): ${errMessage(err)}`;
  }
  const probe = kernel.probeKernel();
  return probe.ok ? undefined : `bpf() not permitted: ${probe.reason}`;
}

function isPrivileged(): boolean {
  if (process.getuid?.() === 0) return true;
  try {
    const status = fs.readFileSync('/proc/self/status', 'latin1');
    const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
    return m !== null && ((BigInt(`0x${m[1]}`) >> CAP_BPF) & 1n) === 1n;
  } catch {
    return false;
  }
}

export interface PrivateBpfRoot {
  /** A fresh directory on bpffs, e.g. /sys/fs/bpf/ctmapd-test-1234-9f86d081. */
  readonly root: string;
  /** Removes the directory and every pin under it. Idempotent. */
  cleanup(): void;
}

/**
 * Creates `<base>/ctmapd-test-<pid>-<random>/` for one test's pins. Throws when `base` is not
 * a bpffs mount (statfs f_type 0xcafe4a11), saying how to mount it. When `t` is given (a test
 * context, or anything with after()), cleanup is registered with it; otherwise the caller
 * must call cleanup(), e.g. from node:test's after().
 */
export function privateBpfRoot(t?: { after(fn: () => void): void }, base: string = DEFAULT_BPFFS): PrivateBpfRoot {
  let type: number;
  try {
    type = fs.statfsSync(base).type;
  } catch (err) {
    throw new Error(`${base}: cannot statfs (${errMessage(err)}); mount bpffs with: mount -t bpf bpf ${base}`);
  }
  if (type !== BPF_FS_MAGIC) {
    throw new Error(`${base} is not bpffs (f_type 0x${type.toString(16)}); mount it with: mount -t bpf bpf ${base}`);
  }
  const root = path.join(base, `ctmapd-test-${process.pid}-${randomBytes(4).toString('hex')}`);
  fs.mkdirSync(root, { mode: 0o700 });
  let removed = false;
  const cleanup = (): void => {
    if (removed) return;
    removed = true;
    fs.rmSync(root, { recursive: true, force: true });
  };
  t?.after(cleanup);
  return { root, cleanup };
}

/** Number of fds currently open through src/sys (loads it: kernel tier only). */
export function bpfFdCount(): number {
  return (require('../../src/sys') as BpfModule).openFdCount();
}

/**
 * Asserts that no fd opened through src/sys is still open beyond `baseline` (take it
 * with bpfFdCount() before the code under test). Throws AssertionError naming the leak.
 */
export function assertNoFdLeak(baseline = 0, what = 'test'): void {
  const now = bpfFdCount();
  if (now !== baseline) {
    throw new AssertionError({
      message: `${what} leaked ${now - baseline} bpf fd(s): ${now} open, ${baseline} before`,
      actual: now,
      expected: baseline,
      operator: 'strictEqual',
    });
  }
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
