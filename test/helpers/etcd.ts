/**
 * A real etcd for the clustermesh tests (the etcd tier), and the tier's policy
 * (ARCHITECTURE.md, "Test tiers", as in helpers/kernel.ts): without an `etcd` binary the
 * tier says so in one loud line and is skipped; with CTMAPD_REQUIRE_ETCD=1 (set by
 * scripts/run-tests.sh, since `make test` installs etcd-server and etcd-client) it fails
 * instead, so a missing package can never silently turn the tier off.
 *
 * Each server is a single-member cluster on 127.0.0.1 with its own free client and peer
 * ports and a temporary data directory, killed and removed when the test ends (also when it
 * fails, and when the test process exits without cleaning up).
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { TestContext } from 'node:test';

export type EtcdTierDecision = { readonly run: true } | { readonly run: false; readonly fail: boolean; readonly reason: string };

let decided: EtcdTierDecision | undefined;

/**
 * Whether the etcd tier runs in this process, decided once: run when `etcd`, `etcdctl` and
 * `openssl` (for the TLS test's certificates) are on PATH and start; otherwise fail when
 * CTMAPD_REQUIRE_ETCD=1, else skip, printing `*** ETCD TIER SKIPPED: <reason> ***` to
 * stderr once.
 */
export function etcdTierDecision(): EtcdTierDecision {
  if (decided) return decided;
  const reason = whyEtcdTierCannotRun();
  if (reason === undefined) {
    decided = { run: true };
  } else {
    decided = { run: false, fail: process.env.CTMAPD_REQUIRE_ETCD === '1', reason };
    if (!decided.fail) process.stderr.write(`*** ETCD TIER SKIPPED: ${reason} ***\n`);
  }
  return decided;
}

/**
 * Guard for an etcd-tier test: `if (!etcdTier(t)) return;` at the top of the test. Returns
 * true when the tier runs; otherwise skips the test, or with CTMAPD_REQUIRE_ETCD=1 throws so
 * the test fails with the reason.
 */
export function etcdTier(t: Pick<TestContext, 'skip'>): boolean {
  const d = etcdTierDecision();
  if (d.run) return true;
  if (d.fail) throw new Error(`etcd tier required (CTMAPD_REQUIRE_ETCD=1) but cannot run: ${d.reason}`);
  t.skip(`etcd tier skipped: ${d.reason}`);
  return false;
}

function whyEtcdTierCannotRun(): string | undefined {
  for (const [bin, arg] of [
    ['etcd', '--version'],
    ['etcdctl', 'version'],
    ['openssl', 'version'],
  ]) {
    const r = spawnSync(bin, [arg], { encoding: 'utf8', timeout: 10_000 });
    if (r.error !== undefined) return `cannot run \`${bin}\` (${r.error.message}); install the Debian packages etcd-server etcd-client openssl`;
    if (r.status !== 0) return `\`${bin} ${arg}\` exited with ${r.status}: ${r.stderr.trim()}`;
  }
  return undefined;
}

/** Client-side files of a TLS etcd, as a clustermesh etcd config names them. */
export interface EtcdClientTls {
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

export interface EtcdServer {
  /** `http://127.0.0.1:<client port>` (`https://` with TLS), the same across restart(). */
  readonly endpoint: string;
  /** With `{ tls: true }`: the CA and a client certificate etcd accepts. */
  readonly tls?: EtcdClientTls;
  put(key: string, value: string): Promise<void>;
  del(key: string): Promise<void>;
  /** Stops the server (SIGTERM) and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** SIGKILLs the server, keeping its data: an etcd lost without warning. */
  kill(): Promise<void>;
  /** Starts the server again on the same ports and data (after kill()); resolves once it answers. */
  restart(): Promise<void>;
}

export interface StartEtcdOptions {
  /**
   * Serve clients over mutual TLS, as clustermesh etcds do: a fresh CA (openssl), a server
   * certificate for 127.0.0.1 and a client certificate (`tls` of the result).
   */
  readonly tls?: boolean;
}

const READY_TIMEOUT_MS = 15_000;

/**
 * Starts an etcd and waits until it answers /health. When `t` is given, stop() is registered
 * with t.after(); otherwise the caller must call stop() (e.g. from node:test's after()).
 */
export async function startEtcd(t?: { after(fn: () => Promise<void>): void }, opts: StartEtcdOptions = {}): Promise<EtcdServer> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'ctmapd-etcd-'));
  let child: ChildProcess | undefined;
  let stopped = false;
  // If the test process ends without stop() (a crash, an uncaught error), take etcd with it.
  const onExit = (): void => {
    child?.kill('SIGKILL');
    fs.rmSync(root, { recursive: true, force: true });
  };
  process.on('exit', onExit);

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const proc = child;
    child = undefined;
    if (proc !== undefined && proc.exitCode === null && proc.signalCode === null) {
      const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await gone;
      clearTimeout(timer);
    }
    fs.rmSync(root, { recursive: true, force: true });
    process.removeListener('exit', onExit);
  };

  try {
    const pki = opts.tls ? await makePki(path.join(root, 'pki')) : undefined;
    const [clientPort, peerPort] = await freePorts(2);
    const endpoint = `${pki ? 'https' : 'http'}://127.0.0.1:${clientPort}`;
    const peer = `http://127.0.0.1:${peerPort}`;
    const args = [
      '--name=ctmapd-test',
      `--data-dir=${path.join(root, 'data')}`,
      `--listen-client-urls=${endpoint}`,
      `--advertise-client-urls=${endpoint}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=ctmapd-test=${peer}`,
      '--initial-cluster-state=new',
      // A single member campaigns after one election timeout, also on restart: keep it short.
      '--heartbeat-interval=10',
      '--election-timeout=100',
      '--logger=zap',
      '--log-level=error',
      ...(pki ? [`--cert-file=${pki.serverCert}`, `--key-file=${pki.serverKey}`, `--trusted-ca-file=${pki.client.caFile}`, '--client-cert-auth'] : []),
    ];
    const ctlTls = pki ? [`--cacert=${pki.client.caFile}`, `--cert=${pki.client.certFile}`, `--key=${pki.client.keyFile}`] : [];
    const etcdctl = (...cmd: string[]): Promise<void> =>
      new Promise((resolve, reject) => {
        const argv = [`--endpoints=${endpoint}`, '--dial-timeout=1s', '--command-timeout=5s', ...ctlTls, ...cmd];
        execFile('etcdctl', argv, { env: { ...process.env, ETCDCTL_API: '3' } }, (err, _out, errOut) =>
          err ? reject(new Error(`etcdctl ${cmd[0]} ${cmd[1]}: ${errOut.trim() || err.message}`)) : resolve(),
        );
      });

    const launch = async (): Promise<void> => {
      let stderr = '';
      const proc = spawn('etcd', args, { stdio: ['ignore', 'ignore', 'pipe'] });
      child = proc;
      proc.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-4000)));
      const exited = new Promise<never>((_, reject) =>
        proc.once('exit', (code, sig) => reject(new Error(`etcd exited (${code ?? sig}) before answering: ${stderr.trim()}`))),
      );
      exited.catch(() => undefined);
      // `etcdctl endpoint health` reads a key through the client port: the same path as the code under test.
      await Promise.race([waitUntil(() => etcdctl('endpoint', 'health').then(() => true, () => false), endpoint), exited]);
    };

    const kill = async (): Promise<void> => {
      const proc = child;
      child = undefined;
      if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      proc.kill('SIGKILL');
      await gone;
    };

    await launch();
    t?.after(stop);
    return {
      endpoint,
      ...(pki && { tls: pki.client }),
      put: (key, value) => etcdctl('put', key, value),
      del: (key) => etcdctl('del', key),
      stop,
      kill,
      restart: async () => {
        if (stopped) throw new Error('etcd test server: restart() after stop()');
        await kill();
        await launch();
      },
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

/** Ports the kernel hands out for port 0, released again for etcd to bind. */
async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<net.Server>((resolve, reject) => {
          const s = net.createServer();
          s.once('error', reject);
          s.listen(0, '127.0.0.1', () => resolve(s));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** Polls `ready` until it says true; rejects after READY_TIMEOUT_MS. */
async function waitUntil(ready: () => Promise<boolean>, endpoint: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (await ready()) return;
    if (Date.now() > deadline) throw new Error(`etcd at ${endpoint} not healthy after ${READY_TIMEOUT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A throw-away CA with a server certificate for 127.0.0.1 and a client certificate (P-256, one day). */
async function makePki(dir: string): Promise<{ serverCert: string; serverKey: string; client: EtcdClientTls }> {
  fs.mkdirSync(dir, { recursive: true });
  const f = (name: string): string => path.join(dir, name);
  const openssl = (...args: string[]): Promise<void> =>
    new Promise((resolve, reject) =>
      execFile('openssl', args, (err, _out, errOut) => (err ? reject(new Error(`openssl ${args[0]}: ${errOut.trim() || err.message}`)) : resolve())),
    );
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl('req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-subj', '/CN=ctmapd-test-ca', '-days', '1');
  for (const [name, ext] of [
    ['server', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'],
    ['client', 'extendedKeyUsage=clientAuth\n'],
  ]) {
    fs.writeFileSync(f(`${name}.ext`), ext);
    await openssl('req', ...ec, '-keyout', f(`${name}.key`), '-out', f(`${name}.csr`), '-subj', `/CN=ctmapd-test-${name}`);
    await openssl('x509', '-req', '-in', f(`${name}.csr`), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-days', '1', '-extfile', f(`${name}.ext`), '-out', f(`${name}.crt`));
  }
  return { serverCert: f('server.crt'), serverKey: f('server.key'), client: { caFile: f('ca.crt'), certFile: f('client.crt'), keyFile: f('client.key') } };
}
