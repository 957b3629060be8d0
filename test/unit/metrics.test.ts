import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'node:http';
import { CtmapError } from '../../src/errors';
import type { GCRunResult } from '../../src/maps/ctmap/gc/types';
import { createLogger } from '../../src/daemon/logger';
import { CtmapdMetrics, isLoopbackHost, startMetricsServer, type MetricsServer } from '../../src/daemon/metrics';

function memoryLogger() {
  const lines: Array<Record<string, any>> = [];
  const log = createLogger('trace', { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

/**
 * A real HTTP request; resolves with status, headers and body. Node's global agent keeps
 * connections alive (as Prometheus does), which close() must not wait for; `fresh` opens a
 * new connection instead.
 */
function request(address: string, path: string, method = 'GET', fresh = false) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const req = http.request(`http://${address}${path}`, { method, ...(fresh ? { agent: false } : {}) }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** The value of one sample line `name{labels} value` of the text format, or undefined. */
function sample(body: string, name: string, labels: Record<string, string>): number | undefined {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .sort();
  for (const line of body.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = (m[2] ?? '').split(',').filter(Boolean).sort();
    if (got.length === want.length && got.every((l, i) => l === want[i])) return Number(m[3]);
  }
  return undefined;
}

function run(tcp: { alive: number; deleted: number }, any: { alive: number; deleted: number }, durationNs: bigint): GCRunResult {
  const maxEntries = 1024;
  return {
    maps: [
      { ref: { family: 'ipv4', kind: 'tcp', clusterId: 0 }, ...tcp, skipped: 0, refreshed: 0, maxEntries },
      // A per-cluster TCP map: added to the TCP series.
      { ref: { family: 'ipv4', kind: 'tcp', clusterId: 7 }, alive: 1, deleted: 1, skipped: 0, refreshed: 0, maxEntries },
      { ref: { family: 'ipv4', kind: 'any', clusterId: 0 }, ...any, skipped: 2, refreshed: 0, maxEntries },
    ],
    natDeleted: 0,
    durationNs,
    ratio: 0,
  };
}

describe('metrics endpoint', () => {
  const { log, lines } = memoryLogger();
  // With prom-client's default process metrics, as the daemon has them.
  const metrics = new CtmapdMetrics();
  let server: MetricsServer;
  after(() => server?.close());

  it('starts on an ephemeral loopback port without a warning', async () => {
    server = await startMetricsServer('127.0.0.1:0', log, metrics.registry);
    assert.match(server.address, /^127\.0\.0\.1:\d+$/);
    assert.notEqual(server.address, '127.0.0.1:0');
    assert.equal(lines.filter((l) => l.level === 40).length, 0);
    assert.ok(lines.some((l) => l.msg === 'metrics endpoint listening' && l.address === server.address));
  });

  it('serves recorded GC runs under Cilium names and labels', async () => {
    metrics.recordGCRun(run({ alive: 10, deleted: 5 }, { alive: 20, deleted: 3 }, 2_000_000_000n), 'ipv4', true);
    metrics.recordGCRun(run({ alive: 8, deleted: 2 }, { alive: 4, deleted: 0 }, 50_000_000n), 'ipv4', true);
    metrics.recordGCRun({ maps: [], natDeleted: 0, durationNs: 1_000_000n, ratio: 0 }, 'ipv6', false);
    metrics.recordNatPurge('ipv4', { ingressAlive: 11, ingressDeleted: 1, egressAlive: 12, egressDeleted: 2 });

    const res = await request(server.address, '/metrics');
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
    const b = res.body;

    const runs = 'cilium_datapath_conntrack_gc_runs_total';
    assert.equal(sample(b, runs, { family: 'ipv4', protocol: 'TCP', status: 'completed' }), 2);
    assert.equal(sample(b, runs, { family: 'ipv4', protocol: 'non-TCP', status: 'completed' }), 2);
    assert.equal(sample(b, runs, { family: 'ipv4', protocol: 'TCP', status: 'uncompleted' }), undefined);
    // A failed pass with no maps: an uncompleted run of both protocols.
    assert.equal(sample(b, runs, { family: 'ipv6', protocol: 'TCP', status: 'uncompleted' }), 1);
    assert.equal(sample(b, runs, { family: 'ipv6', protocol: 'non-TCP', status: 'uncompleted' }), 1);

    // Gauges hold the last pass; TCP sums the global map and cluster 7's (8+1 alive, 2+1 deleted).
    const entries = 'cilium_datapath_conntrack_gc_entries';
    assert.equal(sample(b, entries, { family: 'ipv4', protocol: 'TCP', status: 'alive' }), 9);
    assert.equal(sample(b, entries, { family: 'ipv4', protocol: 'TCP', status: 'deleted' }), 3);
    assert.equal(sample(b, entries, { family: 'ipv4', protocol: 'non-TCP', status: 'alive' }), 4);
    assert.equal(sample(b, entries, { family: 'ipv4', protocol: 'non-TCP', status: 'deleted' }), 0);

    const dur = 'cilium_datapath_conntrack_gc_duration_seconds';
    const tcpDone = { family: 'ipv4', protocol: 'TCP', status: 'completed' };
    assert.equal(sample(b, `${dur}_count`, tcpDone), 2);
    assert.equal(sample(b, `${dur}_sum`, tcpDone), 2.05);
    assert.equal(sample(b, `${dur}_bucket`, { ...tcpDone, le: '0.05' }), 1);
    assert.equal(sample(b, `${dur}_bucket`, { ...tcpDone, le: '2.5' }), 2);
    assert.equal(sample(b, `${dur}_bucket`, { ...tcpDone, le: '+Inf' }), 2);
    assert.match(b, /# TYPE cilium_datapath_conntrack_gc_duration_seconds histogram/);

    const nat = 'cilium_datapath_nat_gc_entries';
    assert.equal(sample(b, nat, { family: 'ipv4', direction: 'ingress', status: 'alive' }), 11);
    assert.equal(sample(b, nat, { family: 'ipv4', direction: 'ingress', status: 'deleted' }), 1);
    assert.equal(sample(b, nat, { family: 'ipv4', direction: 'egress', status: 'alive' }), 12);
    assert.equal(sample(b, nat, { family: 'ipv4', direction: 'egress', status: 'deleted' }), 2);

    // prom-client's default process metrics.
    assert.match(b, /^process_cpu_user_seconds_total \d/m);
    assert.match(b, /^nodejs_heap_size_used_bytes \d/m);
  });

  it('counts on between scrapes', async () => {
    metrics.recordGCRun(run({ alive: 1, deleted: 1 }, { alive: 1, deleted: 1 }, 1n), 'ipv4', false);
    const { body } = await request(server.address, '/metrics?debug=1');
    const runs = 'cilium_datapath_conntrack_gc_runs_total';
    assert.equal(sample(body, runs, { family: 'ipv4', protocol: 'TCP', status: 'completed' }), 2);
    assert.equal(sample(body, runs, { family: 'ipv4', protocol: 'TCP', status: 'uncompleted' }), 1);
    // The gauges show the failed pass's partial counts (1 + cluster 7's 1).
    assert.equal(sample(body, 'cilium_datapath_conntrack_gc_entries', { family: 'ipv4', protocol: 'TCP', status: 'alive' }), 2);
  });

  it('answers 404 elsewhere, 405 for other methods, HEAD without a body', async () => {
    const missing = await request(server.address, '/');
    assert.equal(missing.status, 404);
    assert.equal((await request(server.address, '/metricsx')).status, 404);
    const post = await request(server.address, '/metrics', 'POST');
    assert.equal(post.status, 405);
    assert.equal(post.headers.allow, 'GET, HEAD');
    const head = await request(server.address, '/metrics', 'HEAD');
    assert.equal(head.status, 200);
    assert.equal(head.body, '');
  });

  it('closes, idempotently, with a kept-alive connection open', async () => {
    const address = server.address;
    await Promise.all([server.close(), server.close()]);
    await assert.rejects(request(address, '/metrics', 'GET', true), /ECONNREFUSED/);
  });
});

describe('metrics server setup', () => {
  it('warns when the host is not loopback, and still serves', async (t) => {
    const { log, lines } = memoryLogger();
    const registry = new CtmapdMetrics({ defaultMetrics: false }).registry;
    const s = await startMetricsServer('0.0.0.0:0', log, registry);
    t.after(() => s.close());
    const warn = lines.find((l) => l.level === 40);
    assert.ok(warn, 'a warning');
    assert.match(warn.msg, /non-loopback/);
    assert.equal(warn.address, s.address);
    const port = s.address.split(':').at(-1);
    assert.equal((await request(`127.0.0.1:${port}`, '/metrics')).status, 200);
  });

  it('rejects a malformed address and a port in use', async (t) => {
    const { log } = memoryLogger();
    const registry = new CtmapdMetrics({ defaultMetrics: false }).registry;
    await assert.rejects(startMetricsServer('localhost', log, registry), (e: CtmapError) => e.code === 'invalid-argument');
    await assert.rejects(startMetricsServer('[::1]:99999', log, registry), (e: CtmapError) => e.code === 'invalid-argument');
    const first = await startMetricsServer('127.0.0.1:0', log, registry);
    t.after(() => first.close());
    await assert.rejects(startMetricsServer(first.address, log, registry), (e: CtmapError) => e.code === 'failed-precondition' && /EADDRINUSE/.test(e.message));
  });

  it('keeps separate instances apart', async () => {
    const a = new CtmapdMetrics({ defaultMetrics: false });
    a.recordGCRun(run({ alive: 1, deleted: 1 }, { alive: 1, deleted: 1 }, 1n), 'ipv6', true);
    const text = await a.registry.metrics();
    assert.equal(sample(text, 'cilium_datapath_conntrack_gc_runs_total', { family: 'ipv6', protocol: 'TCP', status: 'completed' }), 1);
    assert.doesNotMatch(text, /^process_/m);
    const b = new CtmapdMetrics({ defaultMetrics: false });
    assert.notStrictEqual(a.registry, b.registry);
    assert.equal(sample(await b.registry.metrics(), 'cilium_datapath_conntrack_gc_runs_total', { family: 'ipv6', protocol: 'TCP', status: 'completed' }), undefined);
  });

  it('knows loopback hosts', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1', 'localhost', 'LOCALHOST']) assert.ok(isLoopbackHost(h), h);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', '128.0.0.1', '::2', 'example.com', '::ffff:10.0.0.1']) assert.ok(!isLoopbackHost(h), h);
  });
});
