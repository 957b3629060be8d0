/**
 * `ctmap` argument parsing (src/cli/args.ts): every command's flags, defaults (also from
 * the daemon's environment variables), help, and bad usage with exit code 2 and a message
 * naming the flag. Plus the pure pieces of the commands: the `ct list` map selection and
 * the human-readable datapath output.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CliUsageError, parseCli } from '../../src/cli/args';
import { formatAttach, formatDetach } from '../../src/cli/datapath';
import { run } from '../../src/cli/main';
import { natText } from '../../src/cli/nat';
import { DEFAULT_DATAPATH_SETTINGS } from '../../src/datapath/settings';

function usage(argv: string[], flag: string | undefined, env: NodeJS.ProcessEnv = {}): CliUsageError {
  try {
    parseCli(argv, env);
  } catch (err) {
    assert.ok(err instanceof CliUsageError, `expected CliUsageError, got ${String(err)}`);
    assert.equal(err.exitCode, 2, err.message);
    if (flag) {
      assert.equal(err.field, flag);
      assert.ok(err.message.includes(flag), `message names ${flag}: ${err.message}`);
    }
    return err;
  }
  assert.fail(`parseCli(${JSON.stringify(argv)}) did not throw`);
}

describe('ctmap datapath attach', () => {
  it('parses every flag', () => {
    assert.deepEqual(parseCli(['datapath', 'attach', '--dev', 'eth0', '--netns', 'blue', '--bpf-root', '/mnt/bpf', '--cluster-id', '7', '--json'], {}), {
      kind: 'datapath-attach',
      dev: 'eth0',
      netns: 'blue',
      bpfRoot: '/mnt/bpf',
      clusterId: 7,
      json: true,
    });
  });

  it("defaults like the daemon: /sys/fs/bpf, or CTMAPD_BPF_ROOT; cluster 0 (the global maps)", () => {
    assert.deepEqual(parseCli(['datapath', 'attach', '--dev=veth0'], {}), {
      kind: 'datapath-attach',
      dev: 'veth0',
      netns: undefined,
      bpfRoot: '/sys/fs/bpf',
      bpfRootFromDaemon: { target: 'unix:/run/ctmapd/ctmapd.sock' },
      clusterId: 0,
      json: false,
    });
    const fromEnv = parseCli(['datapath', 'attach', '--dev', 'veth0'], { CTMAPD_BPF_ROOT: '/run/bpf' });
    assert.equal('bpfRoot' in fromEnv && fromEnv.bpfRoot, '/run/bpf');
    const flagWins = parseCli(['datapath', 'attach', '--dev', 'veth0', '--bpf-root', '/a'], { CTMAPD_BPF_ROOT: '/run/bpf' });
    assert.equal('bpfRoot' in flagWins && flagWins.bpfRoot, '/a');
  });

  it('accepts cluster ids 0..511 and nothing else', () => {
    for (const id of ['0', '1', '255', '511']) {
      const c = parseCli(['datapath', 'attach', '--dev', 'eth0', '--cluster-id', id], {});
      assert.equal(c.kind === 'datapath-attach' && c.clusterId, Number(id));
    }
    for (const bad of ['512', '-1', '1.5', 'seven', '', '0x10']) usage(['datapath', 'attach', '--dev', 'eth0', '--cluster-id', bad], '--cluster-id');
  });

  it('requires --dev and checks it is a valid device name', () => {
    usage(['datapath', 'attach'], '--dev');
    for (const bad of ['', 'a-name-longer-than-15', 'a/b', 'eth 0', '..', 'eth0:1']) usage(['datapath', 'attach', '--dev', bad], '--dev');
  });

  it('checks --netns and --bpf-root', () => {
    for (const bad of ['', 'a/b', '..', '.']) usage(['datapath', 'attach', '--dev', 'eth0', '--netns', bad], '--netns');
    usage(['datapath', 'attach', '--dev', 'eth0', '--bpf-root', 'relative/dir'], '--bpf-root');
    const env = usage(['datapath', 'attach', '--dev', 'eth0'], '--bpf-root', { CTMAPD_BPF_ROOT: 'relative' });
    assert.match(env.message, /CTMAPD_BPF_ROOT/);
  });

  it('refuses unknown flags and commands', () => {
    usage(['datapath', 'attach', '--dev', 'eth0', '--device', 'x'], '--device');
    assert.match(usage(['datapath', 'atach'], undefined).message, /unknown command 'atach'/);
    assert.match(usage([], undefined).message, /missing command/);
    assert.match(usage(['datapath'], undefined).message, /missing command[\s\S]*attach/);
  });

  it('--help exits 0 with the flags, the ownership rule and the netns mechanism', () => {
    for (const argv of [['--help'], ['datapath', '--help'], ['datapath', 'attach', '--help']]) {
      try {
        parseCli(argv, {});
        assert.fail('no help');
      } catch (err) {
        assert.ok(err instanceof CliUsageError);
        assert.equal(err.exitCode, 0);
      }
    }
    const help = (argv: string[]) => {
      try {
        parseCli(argv, {});
      } catch (err) {
        return (err as Error).message;
      }
      return '';
    };
    const attach = help(['datapath', 'attach', '--help']);
    for (const flag of ['--dev', '--netns', '--bpf-root', '--cluster-id', '--json']) assert.ok(attach.includes(flag), flag);
    const group = help(['datapath', '--help']);
    assert.match(group, /Ownership/);
    assert.match(group, /nsenter --net/);
  });
});

describe('ctmap datapath detach / status', () => {
  it('parses', () => {
    assert.deepEqual(parseCli(['datapath', 'detach', '--dev', 'eth0', '--netns', 'n1'], {}), {
      kind: 'datapath-detach',
      dev: 'eth0',
      netns: 'n1',
      bpfRoot: '/sys/fs/bpf',
      bpfRootFromDaemon: { target: 'unix:/run/ctmapd/ctmapd.sock' },
      json: false,
    });
    assert.deepEqual(parseCli(['datapath', 'status', '--json'], {}), { kind: 'datapath-status', netns: undefined, bpfRoot: '/sys/fs/bpf', bpfRootFromDaemon: { target: 'unix:/run/ctmapd/ctmapd.sock' }, json: true });
    assert.deepEqual(parseCli(['datapath', 'reattach', '--netns', 'blue', '--bpf-root', '/b'], {}), {
      kind: 'datapath-reattach',
      netns: 'blue',
      bpfRoot: '/b',
      json: false,
    });
    usage(['datapath', 'detach'], '--dev');
    usage(['datapath', 'detach', '--dev', 'eth0', '--cluster-id', '1'], '--cluster-id');
  });
});

describe('ctmap datapath prune (issue 12 item 6)', () => {
  it('parses --bpf-root (flag, env, default) and --json; --netns and --dev are not its flags', () => {
    assert.deepEqual(parseCli(['datapath', 'prune'], {}), { kind: 'datapath-prune', bpfRoot: '/sys/fs/bpf', bpfRootFromDaemon: { target: 'unix:/run/ctmapd/ctmapd.sock' }, json: false });
    assert.deepEqual(parseCli(['datapath', 'prune', '--json'], { CTMAPD_BPF_ROOT: '/run/bpf' }), { kind: 'datapath-prune', bpfRoot: '/run/bpf', json: true });
    assert.deepEqual(parseCli(['datapath', 'prune', '--bpf-root', '/b'], { CTMAPD_BPF_ROOT: '/run/bpf' }), { kind: 'datapath-prune', bpfRoot: '/b', json: false });
    usage(['datapath', 'prune', '--bpf-root', 'relative'], '--bpf-root');
    usage(['datapath', 'prune', '--netns', 'blue'], '--netns');
    usage(['datapath', 'prune', '--dev', 'eth0'], '--dev');
  });
  it('has help text, and the group help says what it does', () => {
    let text = '';
    try {
      parseCli(['datapath', 'prune', '--help'], {});
    } catch (err) {
      text = (err as Error).message;
    }
    assert.match(text, /network namespaces that are gone/);
    for (const flag of ['--bpf-root', '--json']) assert.ok(text.includes(flag), flag);
    try {
      parseCli(['datapath', '--help'], {});
    } catch (err) {
      text = (err as Error).message;
    }
    assert.match(text, /prune removes the records of network namespaces that no longer exist/);
  });
});

describe('ctmap ct list / gc run', () => {
  it('--socket defaults like the daemon (CTMAPD_SOCKET, else /run/ctmapd/ctmapd.sock)', () => {
    assert.deepEqual(parseCli(['ct', 'list'], {}), { kind: 'ct-list', server: { target: 'unix:/run/ctmapd/ctmapd.sock' }, family: undefined, clusterId: 0, filter: { src: [], dst: [], sport: undefined, dport: undefined, proto: undefined, dir: undefined, state: undefined }, output: 'text' });
    assert.deepEqual(parseCli(['ct', 'list', '--family', 'ipv6', '--cluster-id', '3'], { CTMAPD_SOCKET: '/tmp/s.sock' }), {
      kind: 'ct-list',
      server: { target: 'unix:/tmp/s.sock' },
      family: 'ipv6',
      clusterId: 3,
      filter: { src: [], dst: [], sport: undefined, dport: undefined, proto: undefined, dir: undefined, state: undefined }, output: 'text',
    });
    usage(['ct', 'list', '--family', 'ipx'], '--family');
    usage(['ct', 'list', '--socket', 'rel.sock'], '--socket');
    usage(['ct', 'list', '--socket', `/${'x'.repeat(120)}`], '--socket');
    usage(['ct', 'list'], '--socket', { CTMAPD_SOCKET: 'rel' });
  });

  it('--server takes a socket path, unix:PATH or HOST:PORT with TLS files or --insecure (CTMAP_SERVER too)', () => {
    const server = (argv: string[], env: NodeJS.ProcessEnv = {}) => (parseCli(['ct', 'list', ...argv], env) as { server: unknown }).server;
    assert.deepEqual(server(['--server', '/run/x.sock']), { target: 'unix:/run/x.sock' });
    assert.deepEqual(server(['--server', 'unix:/run/x.sock']), { target: 'unix:/run/x.sock' });
    assert.deepEqual(server([], { CTMAP_SERVER: 'unix:/run/e.sock', CTMAPD_SOCKET: '/ignored.sock' }), { target: 'unix:/run/e.sock' });
    assert.deepEqual(server(['--server', '/run/flag.sock'], { CTMAP_SERVER: 'unix:/run/e.sock' }), { target: 'unix:/run/flag.sock' }, 'the flag wins');
    assert.deepEqual(server(['--server', '127.0.0.1:50051', '--insecure']), { target: '127.0.0.1:50051' });
    assert.deepEqual(server(['--server', '[::1]:50051', '--tls-ca-file', '/ca.pem', '--tls-cert-file', '/c.pem', '--tls-key-file', '/k.pem']), {
      target: '[::1]:50051',
      tls: { caFile: '/ca.pem', certFile: '/c.pem', keyFile: '/k.pem' },
    });
    usage(['ct', 'list', '--server', 'node1:50051'], '--tls-ca-file');
    usage(['ct', 'list', '--server', 'node1:50051', '--tls-ca-file', '/ca.pem'], '--tls-cert-file');
    for (const bad of ['node1', 'node1:0', 'node1:65536', 'unix:rel.sock', '::1:50051']) usage(['ct', 'list', '--server', bad], '--server');
    usage(['ct', 'list'], '--server', { CTMAP_SERVER: 'nowhere' });
    for (const cmd of [['gc', 'run'], ['events'], ['health']]) {
      assert.deepEqual((parseCli([...cmd, '--server', 'h:1', '--insecure'], {}) as { server: unknown }).server, { target: 'h:1' }, cmd.join(' '));
    }
  });

  it('ct commands take conntrack-style flow filters and outputs, naming a bad flag', () => {
    const cmd = parseCli(['ct', 'delete', '-s', '192.0.2.0/24,198.51.100.7', '-s', '2001:db8::/32', '-d', '198.51.100.1', '--sport', '1024', '--dport', '443', '-p', 'tcp', '--dir', 'out', '--state', 'syn-only', '-f', '4', '--cluster-id', 'all', '-o', 'json'], {});
    assert.deepEqual(cmd, {
      kind: 'ct-delete',
      server: { target: 'unix:/run/ctmapd/ctmapd.sock' },
      family: 'ipv4',
      clusterId: 'all',
      filter: { src: ['192.0.2.0/24', '198.51.100.7', '2001:db8::/32'], dst: ['198.51.100.1'], sport: 1024, dport: 443, proto: 6, dir: 'out', state: 'syn-only' },
      output: 'json',
    });
    for (const [name, n] of [['udp', 17], ['ICMP', 1], ['icmpv6', 58], ['132', 132]] as const) {
      assert.equal((parseCli(['ct', 'count', '-p', name], {}) as { filter: { proto?: number } }).filter.proto, n, name);
    }
    assert.equal((parseCli(['ct', 'list', '-o', 'jsonl'], {}) as { output: string }).output, 'jsonl');
    usage(['ct', 'count', '-o', 'jsonl'], '--output');
    usage(['ct', 'list', '-p', 'gre2'], '--proto');
    usage(['ct', 'list', '--dport', '70000'], '--dport');
    usage(['ct', 'list', '--state', 'open'], '--state');
    usage(['ct', 'list', '--cluster-id', 'some'], '--cluster-id');
    usage(['ct', 'delete'], '--src');
  });

  it('gc run takes --time in CT clock seconds', () => {
    assert.deepEqual(parseCli(['gc', 'run', '--time', '4294967295', '--family', '4'], {}), {
      kind: 'gc-run',
      server: { target: 'unix:/run/ctmapd/ctmapd.sock' },
      family: 'ipv4',
      clusterId: 'all',
      time: 4294967295,
      ips: [],
      filter: { src: [], dst: [], sport: undefined, dport: undefined, proto: undefined, dir: undefined, state: undefined },
      output: 'text',
    });
    assert.deepEqual((parseCli(['gc', 'run', '--ip', '192.0.2.0/24,198.51.100.7', '--ip', '2001:db8::1'], {}) as unknown as { ips: string[] }).ips, ['192.0.2.0/24', '198.51.100.7', '2001:db8::1']);
    const ev = parseCli(['events', '-d', '198.51.100.0/24', '--dport', '443', '--kind', 'destroy'], {}) as unknown as { filter: { dst: string[]; dport?: number } };
    assert.deepEqual([ev.filter.dst, ev.filter.dport], [['198.51.100.0/24'], 443], 'events take the ct filters');
    usage(['gc', 'run', '--time', '4294967296'], '--time');
    usage(['gc', 'run', '--time', 'soon'], '--time');
  });

});

describe('ctmap nat list / flush', () => {
  const sock = { target: 'unix:/run/ctmapd/ctmapd.sock' };
  it('parses list with its defaults and every flag', () => {
    assert.deepEqual(parseCli(['nat', 'list'], {}), { kind: 'nat-list', server: sock, family: undefined, clusterId: 0, output: 'text' });
    assert.deepEqual(parseCli(['nat', 'list', '-f', 'ipv6', '--cluster-id', 'all', '-o', 'jsonl'], {}), { kind: 'nat-list', server: sock, family: 'ipv6', clusterId: 'all', output: 'jsonl' });
    assert.deepEqual(parseCli(['nat', 'list', '--family', 'ipv4', '--cluster-id', '7', '--output', 'json', '--socket', '/tmp/x.sock'], {}), {
      kind: 'nat-list',
      server: { target: 'unix:/tmp/x.sock' },
      family: 'ipv4',
      clusterId: 7,
      output: 'json',
    });
  });
  it('parses flush', () => {
    assert.deepEqual(parseCli(['nat', 'flush'], {}), { kind: 'nat-flush', server: sock, family: undefined, clusterId: 0, output: 'text' });
    assert.deepEqual(parseCli(['nat', 'flush', '-f', '4', '--cluster-id', 'ALL', '-o', 'json'], {}), { kind: 'nat-flush', server: sock, family: 'ipv4', clusterId: 'all', output: 'json' });
  });
  it('bad usage names the flag', () => {
    usage(['nat', 'list', '-f', 'ipx'], '--family');
    usage(['nat', 'list', '--cluster-id', '512'], '--cluster-id');
    usage(['nat', 'list', '--cluster-id', 'some'], '--cluster-id');
    usage(['nat', 'list', '-o', 'yaml'], '--output');
    usage(['nat', 'flush', '-o', 'jsonl'], '--output');
    usage(['nat', 'flush', '--state', 'established'], undefined);
    assert.match(usage(['nat'], undefined).message, /missing command/);
  });
  it('help describes both commands and the Cilium line format', () => {
    let help = '';
    try {
      parseCli(['nat', '--help'], {});
    } catch (err) {
      assert.ok(err instanceof CliUsageError && err.exitCode === 0);
      help = err.message;
    }
    assert.match(help, /list/);
    assert.match(help, /flush/);
    assert.match(help, /XLATE_SRC 192\.168\.1\.1:40000 Created=120sec ago NeedsCT=1/);
  });
});

describe('nat list text', () => {
  it('prints Cilium\'s `bpf nat list` lines, OUT and IN, IPv4 and IPv6', () => {
    const out4 = { family: 'FAMILY_IPV4', cluster_id: 0, key: { saddr: '10.0.0.1', daddr: '1.1.1.1', sport: 40000, dport: 80, nexthdr: 6, flags: 0 }, entry: { addr: '192.168.1.1', port: 40000, created: '5', needs_ct: true, age_seconds: '120' } };
    assert.equal(natText(out4), 'TCP OUT 10.0.0.1:40000 -> 1.1.1.1:80 XLATE_SRC 192.168.1.1:40000 Created=120sec ago NeedsCT=1\n');
    const in4 = { ...out4, key: { saddr: '1.1.1.1', daddr: '192.168.1.1', sport: 80, dport: 40000, nexthdr: 17, flags: 1 }, entry: { addr: '10.0.0.1', port: 40000, created: '5', needs_ct: false, age_seconds: '3' } };
    assert.equal(natText(in4), 'UDP IN 1.1.1.1:80 -> 192.168.1.1:40000 XLATE_DST 10.0.0.1:40000 Created=3sec ago NeedsCT=0\n');
    const v6 = { family: 'FAMILY_IPV6', cluster_id: 0, key: { saddr: 'fd00::1', daddr: '2001:db8::5', sport: 0x1234, dport: 0, nexthdr: 58, flags: 0 }, entry: { addr: '2001:db8::10', port: 7, created: '5', needs_ct: true, age_seconds: '0' } };
    assert.equal(natText(v6), 'ICMPv6 OUT [fd00::1]:4660 -> [2001:db8::5]:0 XLATE_SRC [2001:db8::10]:7 Created=0sec ago NeedsCT=1\n');
    assert.equal(natText({ ...out4, key: { ...out4.key, nexthdr: 0 } }), '', 'nexthdr 0 is skipped, as Cilium does');
  });
});

describe('ctmap datapath / fate: the bpf-root from the daemon', () => {
  it('asks the daemon only when neither --bpf-root nor CTMAPD_BPF_ROOT is given', () => {
    const dflt = parseCli(['fate', 'status', '--server', '/tmp/d.sock'], {}) as any;
    assert.deepEqual([dflt.bpfRoot, dflt.bpfRootFromDaemon], ['/sys/fs/bpf', { target: 'unix:/tmp/d.sock' }]);
    const flag = parseCli(['fate', 'status', '--bpf-root', '/sys/fs/bpf'], {}) as any;
    assert.deepEqual([flag.bpfRoot, 'bpfRootFromDaemon' in flag], ['/sys/fs/bpf', false], 'an explicit flag equal to the default is still explicit');
    const env = parseCli(['datapath', 'reattach'], { CTMAPD_BPF_ROOT: '/run/bpf' }) as any;
    assert.deepEqual([env.bpfRoot, 'bpfRootFromDaemon' in env], ['/run/bpf', false]);
    const sock = parseCli(['datapath', 'status'], { CTMAPD_SOCKET: '/run/x.sock' }) as any;
    assert.deepEqual(sock.bpfRootFromDaemon, { target: 'unix:/run/x.sock' });
  });
  it('says so in the help', () => {
    let text = '';
    try {
      parseCli(['datapath', '--help'], {});
    } catch (err) {
      text = (err as CliUsageError).message;
    }
    assert.match(text, /asks the daemon[\s\S]*ActiveMaps\.bpf_root[\s\S]*explicit --bpf-root or CTMAPD_BPF_ROOT wins/);
  });
});

describe('ctmap gc run / ct get / cluster watch / stats', () => {
  it('gc run takes the ct list flow filters, --cluster-id N|all and -o', () => {
    const c = parseCli(['gc', 'run', '-s', '192.0.2.0/24', '-d', '198.51.100.1', '--sport', '1000', '--dport', '443', '-p', 'tcp', '--dir', 'in', '--state', 'closing', '-f', 'ipv6', '--cluster-id', '5', '-o', 'json', '--ip', '203.0.113.1'], {});
    assert.deepEqual(c, {
      kind: 'gc-run',
      server: { target: 'unix:/run/ctmapd/ctmapd.sock' },
      family: 'ipv6',
      clusterId: 5,
      time: undefined,
      ips: ['203.0.113.1'],
      filter: { src: ['192.0.2.0/24'], dst: ['198.51.100.1'], sport: 1000, dport: 443, proto: 6, dir: 'in', state: 'closing' },
      output: 'json',
    });
    assert.equal((parseCli(['gc', 'run'], {}) as any).clusterId, 'all', 'every open map, as before the flag existed');
    usage(['gc', 'run', '--dport', '70000'], '--dport');
    usage(['gc', 'run', '--state', 'sleepy'], '--state');
    usage(['gc', 'run', '-o', 'yaml'], '--output');
    usage(['gc', 'run', '--cluster-id', '512'], '--cluster-id');
  });
  it('ct get: one flow, --dir out by default, ports 0 by default; addresses of one family', () => {
    assert.deepEqual(parseCli(['ct', 'get', '-s', '192.0.2.1', '-d', '198.51.100.2', '--sport', '40000', '--dport', '443', '-p', 'tcp'], {}), {
      kind: 'ct-get',
      server: { target: 'unix:/run/ctmapd/ctmapd.sock' },
      clusterId: 0,
      src: '192.0.2.1',
      dst: '198.51.100.2',
      sport: 40000,
      dport: 443,
      proto: 6,
      dir: 'out',
      output: 'text',
    });
    const c = parseCli(['ct', 'get', '-s', '2001:db8::1', '-d', '2001:db8::2', '-p', 'icmpv6', '--dir', 'service', '--cluster-id', '7', '-o', 'json'], {}) as any;
    assert.deepEqual([c.sport, c.dport, c.proto, c.dir, c.clusterId, c.output], [0, 0, 58, 'service', 7, 'json']);
    usage(['ct', 'get', '-d', '198.51.100.2', '-p', 'tcp'], '--src');
    usage(['ct', 'get', '-s', '192.0.2.1', '-p', 'tcp'], '--dst');
    usage(['ct', 'get', '-s', '192.0.2.1', '-d', '198.51.100.2'], '--proto');
    usage(['ct', 'get', '-s', '192.0.2.0/24', '-d', '198.51.100.2', '-p', 'tcp'], '--src');
    usage(['ct', 'get', '-s', '192.0.2.1', '-d', '2001:db8::2', '-p', 'tcp'], '--dst');
    usage(['ct', 'get', '-s', '192.0.2.1', '-d', '198.51.100.2', '-p', 'tcp', '--dir', 'up'], '--dir');
    usage(['ct', 'get', '-s', '192.0.2.1', '-d', '198.51.100.2', '-p', 'tcp', '--cluster-id', 'all'], '--cluster-id');
  });
  it('cluster watch: -o text|json|jsonl (json and jsonl are both JSON lines), --count', () => {
    assert.deepEqual(parseCli(['cluster', 'watch'], {}), { kind: 'cluster-watch', server: { target: 'unix:/run/ctmapd/ctmapd.sock' }, output: 'text', count: undefined });
    assert.equal((parseCli(['cluster', 'watch', '-o', 'jsonl', '--count', '2'], {}) as any).output, 'json');
    assert.equal((parseCli(['cluster', 'watch', '-o', 'json', '--count', '2'], {}) as any).count, 2);
    usage(['cluster', 'watch', '--count', '0'], '--count');
  });
  it('stats has no per-CPU flag: the per-CPU lines are always printed, as conntrack -S does', () => {
    assert.deepEqual(parseCli(['stats', '-o', 'json'], {}), { kind: 'stats', server: { target: 'unix:/run/ctmapd/ctmapd.sock' }, output: 'json' });
  });
});

describe('ctmap health', () => {
  it('checks the whole server on the daemon socket (CTMAPD_SOCKET, else the default) within 3 s', () => {
    assert.deepEqual(parseCli(['health'], {}), { kind: 'health', server: { target: 'unix:/run/ctmapd/ctmapd.sock' }, service: '', timeoutMs: 3000 });
    assert.deepEqual(parseCli(['health'], { CTMAPD_SOCKET: '/run/x/d.sock' }), { kind: 'health', server: { target: 'unix:/run/x/d.sock' }, service: '', timeoutMs: 3000 });
    assert.deepEqual(parseCli(['health', '--socket', '/s.sock', '--service', 'ctmap.v1.CTMaps', '--timeout', '0.5'], { CTMAPD_SOCKET: '/ignored' }), {
      kind: 'health',
      server: { target: 'unix:/s.sock' },
      service: 'ctmap.v1.CTMaps',
      timeoutMs: 500,
    });
  });

  it('refuses a bad --timeout or --socket, naming the flag', () => {
    for (const bad of ['0', '-1', 'soon', '1e3', '3601', '']) usage(['health', '--timeout', bad], '--timeout');
    usage(['health', '--socket', 'relative.sock'], '--socket');
    usage(['health'], '--socket', { CTMAPD_SOCKET: 'relative' });
    usage(['health', '--dev', 'eth0'], '--dev');
  });

  it('--help says what the exit code means', () => {
    try {
      parseCli(['health', '--help'], {});
      assert.fail('no help');
    } catch (err) {
      assert.ok(err instanceof CliUsageError);
      assert.equal(err.exitCode, 0);
      assert.match(err.message, /exit 0 only when SERVING/);
      for (const flag of ['--socket', '--service', '--timeout']) assert.ok(err.message.includes(flag), flag);
    }
  });
});

describe('ctmap run', () => {
  const io = () => {
    const o = { out: '', err: '' };
    return { o, io: { out: (s: string) => (o.out += s), err: (s: string) => (o.err += s) } };
  };

  it('exit 2 with "ctmap: <message naming the flag>" on stderr', async () => {
    const { o, io: sink } = io();
    assert.equal(await run(['datapath', 'attach', '--dev', 'eth0', '--cluster-id', '600'], {}, sink), 2);
    assert.match(o.err, /^ctmap: .*--cluster-id/);
    assert.equal(o.out, '');
  });

  it('exit 0 with help on stdout', async () => {
    const { o, io: sink } = io();
    assert.equal(await run(['--help'], {}, sink), 0);
    assert.match(o.out, /Usage: ctmap/);
  });

  it('exit 2 for a --netns that does not exist, before anything else happens', async () => {
    const { o, io: sink } = io();
    assert.equal(await run(['datapath', 'detach', '--dev', 'eth0', '--netns', 'ctmap-unit-no-such-netns'], {}, sink), 2);
    assert.match(o.err, /--netns: no network namespace "ctmap-unit-no-such-netns"/);
  });

  it('exit 1 naming the daemon socket when the daemon is not there', async () => {
    const { o, io: sink } = io();
    assert.equal(await run(['ct', 'list', '--socket', '/nonexistent/ctmapd.sock'], {}, sink), 1);
    assert.match(o.err, /CTMaps\.ActiveMaps: UNAVAILABLE: .*is ctmapd running with --socket \/nonexistent\/ctmapd\.sock/);
  });
});

describe('datapath output', () => {
  it('attach names every hook and who owns the qdisc', () => {
    const text = formatAttach({
      dev: 'veth0',
      ifindex: 4,
      netns: 1,
      hooks: [
        { direction: 'ingress', handle: 1, priority: 49152, progId: 10, replaced: false },
        { direction: 'egress', handle: 1, priority: 49152, progId: 11, replaced: true },
      ],
      createdQdisc: true,
      ownsQdisc: true,
      droppedStaleRecord: false,
      prunedDevices: [],
      settings: { ...DEFAULT_DATAPATH_SETTINGS, clusterId: 7 },
    });
    assert.match(text, /attached ct_ingress\/ct_egress to veth0 \(ifindex 4\), tracking into the CT maps of cluster 7/);
    assert.match(text, /ingress handle 0x1 pref 49152 prog id 10\n/);
    assert.match(text, /egress  handle 0x1 pref 49152 prog id 11 \(replaced ctmap's previous filter\)/);
    assert.match(text, /clsact qdisc: created by this attach/);
  });

  it('detach says clearly when there was nothing to detach', () => {
    const text = formatDetach({ dev: 'veth0', ifindex: 4, netns: 1, attached: false, hooks: [], qdisc: 'not-ours', otherFilters: 0, prunedDevices: [] }, ', netns blue', '/sys/fs/bpf');
    assert.equal(text, 'nothing to detach: ctmap has no datapath attached to veth0 (ifindex 4, netns blue; no record under /sys/fs/bpf/ctmapd/datapath)\n');
  });
});
