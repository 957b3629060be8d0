/**
 * Bench "fate" (issue 13 item 1): TCP connections per second from a process in a cgroup
 * with fate-sharing attached, against the same loop from a process in a cgroup without,
 * interleaved in rounds (measureRounds) in the same process tree, on the same data.
 *
 * Set-up, all private to this run and removed at the end: a network namespace with lo up
 * and the conntrack datapath attached to lo (so every connection has CT entries that the
 * fate program finds and expires at close); the daemon's maps created in this process as
 * the daemon would, on a private bpffs directory; an echo-less TCP server in the
 * namespace, outside both cgroups; two cgroups, fate attached to one. Each run spawns a
 * client in a cgroup that opens CONNECTIONS connections, CONCURRENCY at a time (connect,
 * then close: FIN, so sock_release expires the entry), and reports its own elapsed time,
 * so process start-up is not measured.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { parseConfig } from '../src/config/config';
import { CTMAP_BIN } from '../src/config/paths';
import { attachFate, detachFate } from '../src/datapath/fate';
import { datapathSettingsFrom } from '../src/datapath/settings';
import { DatapathSideMaps } from '../src/datapath/side-maps';
import { cgroup2Mounts } from '../src/link/cgroup';
import { clusterOuterCtMapSpec, globalCtMapSpec } from '../src/maps/ctmap/spec';
import { kernelBackend } from '../src/maps/kernel';
import { BenchContext, BenchSection, HarnessError, fmtInt, fmtRatio, machineInfo, markdownTable, measureRounds, privateBpffsDir } from './lib';

const CONNECTIONS = 2000;
const CONCURRENCY = 16;
const PORT = 7201;

/** The client and server, run with `node -e`: tiny, and the same code for both cgroups. */
const SERVER = `const net=require('net');net.createServer((s)=>{s.on('error',()=>{});s.on('end',()=>s.end());}).listen(${PORT},'127.0.0.1',()=>process.stdout.write('ready\\n'));`;
const CLIENT = `const net=require('net');const N=+process.argv[1],C=+process.argv[2];let started=0,done=0;const t0=process.hrtime.bigint();
function one(){if(started>=N)return;started++;const s=net.connect(${PORT},'127.0.0.1',()=>s.end());s.on('error',(e)=>{console.error(e.message);process.exit(1)});s.on('close',()=>{done++;if(done===N){process.stdout.write(String(Number(process.hrtime.bigint()-t0)/1e6)+'\\n');process.exit(0)}one()});}
for(let i=0;i<C;i++)one();`;

function run(cmd: string, args: readonly string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new HarnessError(`${cmd} ${args.join(' ')}: exit ${r.status}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

export const fateBench: BenchSection = {
  name: 'fate',
  title: 'TCP connections per second through a cgroup with fate-sharing attached vs the same loop without',

  async run(ctx: BenchContext) {
    const root = privateBpffsDir(ctx);
    const cgRoot = cgroup2Mounts()[0];
    if (!cgRoot) throw new HarnessError('cgroup2 is not mounted');
    const tag = `ctm-bench-${process.pid}-${randomBytes(3).toString('hex')}`;
    const ns = tag;
    run('ip', ['netns', 'add', ns]);
    ctx.cleanup.add(`ip netns del ${ns}`, () => void spawnSync('ip', ['netns', 'del', ns]));
    run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    // 2 x (warm-up + runs) x CONNECTIONS client ports within a minute: reuse TIME_WAIT ports.
    run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv4.tcp_tw_reuse=1', 'net.ipv4.ip_local_port_range=10000 65000']);

    const flags = parseConfig(['--bpf-root', root, '--bpf-ct-global-tcp-max', '262144', '--bpf-ct-global-any-max', '65536'], {});
    const cfg = {
      bpfRoot: root,
      enableIPv4: true,
      enableIPv6: true,
      ctTcpMax: flags.bpfCtGlobalTcpMax,
      ctAnyMax: flags.bpfCtGlobalAnyMax,
      distributedLru: false,
      clusterIdMax: flags.maxConnectedClusters,
    };
    for (const family of ['ipv4', 'ipv6'] as const) {
      for (const kind of ['tcp', 'any'] as const) {
        for (const spec of [globalCtMapSpec(cfg, family, kind), clusterOuterCtMapSpec(cfg, family, kind)]) {
          const map = kernelBackend.create(spec);
          ctx.cleanup.add(`close ${spec.name}`, () => map.close());
        }
      }
    }
    const side = DatapathSideMaps.open(kernelBackend, root, datapathSettingsFrom(flags), pino({ level: 'silent' }));
    ctx.cleanup.add('close side maps', () => side.close());
    run('nsenter', [`--net=/run/netns/${ns}`, '--', process.execPath, CTMAP_BIN, 'datapath', 'attach', '--dev', 'lo', '--bpf-root', root]);

    const cgroups = { fate: path.join(cgRoot, `${tag}-fate`), plain: path.join(cgRoot, `${tag}-plain`) };
    for (const dir of Object.values(cgroups)) {
      fs.mkdirSync(dir);
      ctx.cleanup.add(`rmdir ${dir}`, () => fs.rmdirSync(dir));
    }
    attachFate({ bpfRoot: root, cgroup: cgroups.fate });
    ctx.cleanup.add('fate detach', () => void detachFate({ bpfRoot: root, cgroup: cgroups.fate }));

    const server = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', SERVER], { stdio: ['ignore', 'pipe', 'inherit'] });
    ctx.cleanup.add('stop server', () => void server.kill('SIGKILL'));
    await new Promise<void>((resolve, reject) => {
      server.stdout!.on('data', (d) => String(d).includes('ready') && resolve());
      server.on('exit', (code) => reject(new HarnessError(`server exited ${code}`)));
    });

    const client = (cgroup: string) => async () => {
      const out = await new Promise<string>((resolve, reject) => {
        const c = spawn('sh', ['-c', 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup, 'ip', 'netns', 'exec', ns, process.execPath, '-e', CLIENT, String(CONNECTIONS), String(CONCURRENCY)], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        let o = '';
        let e = '';
        c.stdout!.on('data', (d) => (o += d));
        c.stderr!.on('data', (d) => (e += d));
        c.on('exit', (code) => (code === 0 ? resolve(o) : reject(new HarnessError(`client exited ${code}: ${e}`))));
      });
      const ms = Number(out.trim());
      return { ms, extra: { perSecond: (CONNECTIONS * 1000) / ms } };
    };
    const before = side.fateCounters();
    const [plain, fate] = await measureRounds(ctx, [
      { label: 'cgroup without fate-sharing', run: client(cgroups.plain) },
      { label: 'cgroup with fate-sharing attached', run: client(cgroups.fate) },
    ]);
    const after = side.fateCounters();
    const fateRuns = ctx.warmup + ctx.runs;
    const recorded = Number(after.keys_recorded - before.keys_recorded);
    const expired = Number(after.expired - before.expired);
    // Each client connection is one socket of the fate cgroup; the server's are outside it.
    if (recorded !== fateRuns * CONNECTIONS) throw new HarnessError(`fate recorded ${recorded} sockets, want ${fateRuns * CONNECTIONS}`);
    const ratio = fate.extra.perSecond / plain.extra.perSecond;
    const table = markdownTable(
      ['measurement', 'median conn/s', 'median ms', 'runs', '× without', 'target', 'result'],
      [
        [plain.label, fmtInt(Math.round(plain.extra.perSecond)), plain.medianMs.toFixed(0), String(plain.samples.length), fmtRatio(1), '—', '—'],
        [fate.label, fmtInt(Math.round(fate.extra.perSecond)), fate.medianMs.toFixed(0), String(fate.samples.length), fmtRatio(ratio), '≥ 0.95×', ratio >= 0.95 ? 'PASS' : 'MISS'],
      ],
    );
    const info = machineInfo();
    const markdown = [
      `Latest run: ${new Date().toISOString()} — \`node dist/bench/run.js fate\` (also part of \`make bench\`).`,
      '',
      `- Machine: ${info.cpu}, ${info.nproc} CPUs; ${info.kernel}; Node ${info.node}.`,
      `- Loop: one client process per run, placed in its cgroup through cgroup.procs, ${fmtInt(CONNECTIONS)} TCP connections to 127.0.0.1 in a private network namespace, ${CONCURRENCY} at a time (connect, then close); the conntrack datapath attached to that namespace's lo, so every connection has CT entries.`,
      `- Runs: ${ctx.warmup} warm-up + ${ctx.runs} measured each, interleaved in rounds; the client times itself (no process start-up). conn/s = connections / median time.`,
      `- Fate-sharing recorded ${fmtInt(recorded)} sockets and expired ${fmtInt(expired)} entries at close over its runs (ctmapd_fate_stats): ${(expired / recorded).toFixed(1)} per socket (on lo the datapath sees every packet at egress and at ingress, so a flow has an OUT and an IN entry): the runs did exercise it.`,
      '',
      table,
    ].join('\n');
    return { text: `${this.title}\n\n${table}\n`, markdown };
  },
};
