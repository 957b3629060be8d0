/**
 * Traffic for the datapath e2e tests, run as its own process inside a network namespace
 * (`ip netns exec NS node netns-traffic.js <json>`):
 *
 *   {"mode":"serve", "addresses":[...], "tcpPort":P, "udpPort":Q}
 *     TCP and UDP echo servers on every address; prints "ready\n" once all listen, runs
 *     until killed. A TCP message starting with "R" is echoed and then answered with a
 *     FIN (the client resets); anything else is echoed and the server closes after the
 *     client does.
 *   {"mode":"flows", "steps":[...]}
 *     runs the steps one after the other and prints one JSON line per step.
 *   {"mode":"hold", "host":H, "port":P}
 *     one TCP connection kept open: prints {"localPort":N} once connected, then for each
 *     stdin line "send <n>" writes n bytes and prints "echoed <n>" once they came back;
 *     "close" ends it (FIN) and prints "closed" when the server closed too.
 *
 * Every step reports the CT clock (CLOCK_MONOTONIC seconds, as ctNow()) just before its
 * first and just after its last packet, and the namespace's own counters around it: TCP
 * segments in and out (/proc/net/snmp, shared by IPv4 and IPv6) and the packets and bytes
 * of the given device (/proc/net/dev). Both files show the reading process's namespace.
 */
import { spawnSync } from 'node:child_process';
import * as dgram from 'node:dgram';
import * as fs from 'node:fs';
import * as net from 'node:net';
import { serveEcho } from './echo-servers';

export type Step =
  | { kind: 'tcp-fin' | 'tcp-rst'; host: string; port: number; dev: string; payload: number }
  | { kind: 'tcp-refused'; host: string; port: number; dev: string }
  | { kind: 'udp'; host: string; port: number; dev: string; payload: number }
  | { kind: 'udp-closed'; host: string; port: number; dev: string; payload: number }
  | { kind: 'ping'; host: string; id: number; dev: string };

export interface Counters {
  tcpIn: number;
  tcpOut: number;
  rxPackets: number;
  rxBytes: number;
  txPackets: number;
  txBytes: number;
}

export interface StepResult {
  kind: Step['kind'];
  host: string;
  /** Local port of the flow (0 for ping). */
  localPort: number;
  /** CT clock seconds (fractional) before the first and after the last packet. */
  start: number;
  end: number;
  before: Counters;
  after: Counters;
  /** What the client saw: echoed bytes, the error code of an ICMP error, ping output. */
  detail: string;
}

function monotonicSeconds(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

/** The namespace's counters; `dev` must exist in it. */
export function readCounters(dev: string): Counters {
  const snmp = fs.readFileSync('/proc/net/snmp', 'utf8').split('\n');
  const tcp = snmp.filter((l) => l.startsWith('Tcp:'));
  const names = tcp[0].split(/\s+/);
  const values = tcp[1].split(/\s+/).map(Number);
  const devLine = fs
    .readFileSync('/proc/net/dev', 'utf8')
    .split('\n')
    .find((l) => l.trim().startsWith(`${dev}:`));
  if (!devLine) throw new Error(`no ${dev} in /proc/net/dev`);
  const f = devLine.split(':')[1].trim().split(/\s+/).map(Number);
  return {
    tcpIn: values[names.indexOf('InSegs')],
    tcpOut: values[names.indexOf('OutSegs')],
    rxBytes: f[0],
    rxPackets: f[1],
    txBytes: f[8],
    txPackets: f[9],
  };
}

function tcpFlow(step: Extract<Step, { kind: 'tcp-fin' | 'tcp-rst' }>): Promise<{ localPort: number; detail: string }> {
  return new Promise((resolve, reject) => {
    const message = Buffer.alloc(step.payload, step.kind === 'tcp-rst' ? 'R' : 'F');
    let echoed = 0;
    let localPort = 0;
    // allowHalfOpen: after the server's FIN the client is still open, so it can reset.
    const sock = net.connect({ host: step.host, port: step.port, allowHalfOpen: true }, () => {
      localPort = sock.localPort ?? 0;
      sock.write(message);
    });
    sock.on('data', (d) => {
      echoed += d.length;
      // Whole echo back: close our side (FIN) and let the server close its own.
      if (step.kind === 'tcp-fin' && echoed === message.length) sock.end();
    });
    sock.on('end', () => {
      // The server's FIN: with tcp-rst, answer with a reset (SO_LINGER 0 + close).
      if (step.kind === 'tcp-rst') sock.resetAndDestroy();
    });
    sock.on('error', reject);
    sock.on('close', () => resolve({ localPort, detail: `echoed ${echoed}` }));
  });
}

/**
 * A connect to a port nobody listens on: SYN out, RST+ACK back, ECONNREFUSED. The local
 * port is chosen here, because a refused socket is closed before it could be asked.
 */
function tcpRefused(step: Extract<Step, { kind: 'tcp-refused' }>): Promise<{ localPort: number; detail: string }> {
  const localPort = 40000 + Math.floor(Math.random() * 20000);
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: step.host, port: step.port, localPort });
    sock.on('connect', () => reject(new Error(`tcp-refused ${step.host}:${step.port}: connected`)));
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED') resolve({ localPort, detail: 'ECONNREFUSED' });
      else reject(err);
    });
  });
}

function udpFlow(step: Extract<Step, { kind: 'udp' | 'udp-closed' }>): Promise<{ localPort: number; detail: string }> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket(step.host.includes(':') ? 'udp6' : 'udp4');
    const done = (detail: string): void => {
      const localPort = sock.address().port;
      sock.close();
      resolve({ localPort, detail });
    };
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error(`${step.kind} ${step.host}:${step.port}: no answer within 5 s`));
    }, 5000);
    // Connected, so that the ICMP port unreachable comes back as ECONNREFUSED.
    sock.connect(step.port, step.host, () => sock.send(Buffer.alloc(step.payload, 'u')));
    sock.on('message', (m) => {
      clearTimeout(timer);
      done(`echoed ${m.length}`);
    });
    sock.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      if (step.kind === 'udp-closed' && err.code === 'ECONNREFUSED') done('ECONNREFUSED');
      else reject(err);
    });
  });
}

function ping(step: Extract<Step, { kind: 'ping' }>): { localPort: number; detail: string } {
  const r = spawnSync('ping', [step.host.includes(':') ? '-6' : '-4', '-n', '-c', '1', '-W', '5', '-e', String(step.id), step.host], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`ping ${step.host}: exit ${r.status}: ${r.stdout}${r.stderr}`);
  return { localPort: 0, detail: r.stdout };
}

async function runSteps(steps: Step[]): Promise<void> {
  for (const step of steps) {
    const before = readCounters(step.dev);
    const start = monotonicSeconds();
    let r: { localPort: number; detail: string };
    switch (step.kind) {
      case 'tcp-fin':
      case 'tcp-rst':
        r = await tcpFlow(step);
        break;
      case 'tcp-refused':
        r = await tcpRefused(step);
        break;
      case 'udp':
      case 'udp-closed':
        r = await udpFlow(step);
        break;
      case 'ping':
        r = ping(step);
        break;
    }
    const end = monotonicSeconds();
    const after = readCounters(step.dev);
    const result: StepResult = { kind: step.kind, host: step.host, localPort: r.localPort, start, end, before, after, detail: r.detail };
    process.stdout.write(`${JSON.stringify(result)}\n`);
  }
}

function serve(addresses: string[], tcpPort: number, udpPort: number): Promise<void> {
  return serveEcho(addresses, tcpPort, udpPort, (sock) => {
    let mode = '';
    sock.on('data', (d) => {
      mode ||= String.fromCharCode(d[0]);
      sock.write(d);
      // "R": end after the echo, so that the client's reset answers our FIN.
      if (mode === 'R') sock.end();
    });
    sock.on('end', () => {
      if (mode !== 'R') sock.end();
    });
    sock.on('error', () => undefined); // the reset
  });
}

/** See "hold" in the file comment. */
async function hold(host: string, port: number): Promise<void> {
  const sock = net.connect({ host, port });
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', reject);
  });
  process.stdout.write(`${JSON.stringify({ localPort: sock.localPort })}\n`);
  let want = 0;
  let got = 0;
  sock.on('data', (d) => {
    got += d.length;
    if (want > 0 && got >= want) {
      process.stdout.write(`echoed ${got}\n`);
      want = 0;
      got = 0;
    }
  });
  sock.on('close', () => {
    process.stdout.write('closed\n');
    process.exit(0);
  });
  let pending = '';
  process.stdin.on('data', (d) => {
    pending += d;
    for (let nl = pending.indexOf('\n'); nl >= 0; nl = pending.indexOf('\n')) {
      const line = pending.slice(0, nl).trim();
      pending = pending.slice(nl + 1);
      const m = /^send (\d+)$/.exec(line);
      if (m) {
        want = Number(m[1]);
        sock.write(Buffer.alloc(want, 'H'));
      } else if (line === 'close') {
        sock.end();
      }
    }
  });
}

if (require.main === module) {
  const cfg = JSON.parse(process.argv[2]);
  const run = cfg.mode === 'serve' ? serve(cfg.addresses, cfg.tcpPort, cfg.udpPort) : cfg.mode === 'hold' ? hold(cfg.host, cfg.port) : runSteps(cfg.steps);
  run.catch((err) => {
    process.stderr.write(`netns-traffic: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
}
