import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError, MAP_SIZE_MAX, MAP_SIZE_MIN, envName, parseConfig } from '../../src/config/config';

/** Asserts parseConfig rejects with exit code 2 and a message naming `flag`. */
function rejects(argv: string[], flag: string, env: NodeJS.ProcessEnv = {}): ConfigError {
  try {
    parseConfig(argv, env);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `expected ConfigError, got ${String(err)}`);
    assert.equal(err.exitCode, 2);
    assert.equal(err.code, 'invalid-argument');
    assert.match(err.message, new RegExp(flag.replace(/[-]/g, '\\-')));
    return err;
  }
  assert.fail(`parseConfig(${JSON.stringify(argv)}) did not throw`);
}

describe('parseConfig', () => {
  it('has the documented defaults', () => {
    assert.deepEqual(parseConfig([], {}), {
      backend: 'auto',
      bpfRoot: '/sys/fs/bpf',
      socket: '/run/ctmapd/ctmapd.sock',
      listenInsecure: false,
      enableIpv4: true,
      enableIpv6: true,
      bpfCtGlobalTcpMax: 524288,
      bpfCtGlobalAnyMax: 262144,
      bpfDistributedLru: false,
      allowMapRecreate: false,
      maxConnectedClusters: 255,
      clustermeshReconcileGrace: 600,
      clustermeshEtcdGrace: 300,
      bpfCtTimeoutRegularTcp: 8000,
      bpfCtTimeoutRegularAny: 60,
      bpfCtTimeoutServiceTcp: 8000,
      bpfCtTimeoutServiceAny: 60,
      bpfCtTimeoutServiceTcpGrace: 60,
      bpfCtTimeoutRegularTcpSyn: 60,
      bpfCtTimeoutRegularTcpFin: 10,
      monitorAggregationInterval: 5,
      ctEvents: 'signals',
      ctFillUpShare: 50,
      ctEventsRingSize: 4194304,
      ctEventsBuffer: 65536,
      logLevel: 'info',
      logFormat: 'json',
    });
  });

  it('--max-connected-clusters takes 255 or 511 only', () => {
    assert.equal(parseConfig(['--max-connected-clusters', '511'], {}).maxConnectedClusters, 511);
    for (const bad of ['256', '0', 'x', '511.0']) {
      assert.throws(() => parseConfig([`--max-connected-clusters=${bad}`], {}), (err: unknown) => err instanceof ConfigError && err.field === '--max-connected-clusters');
    }
  });

  it('takes flags in both --flag=value and --flag value form', () => {
    const c = parseConfig(
      ['--backend=memory', '--bpf-root', '/tmp/bpffs/', '--socket=/tmp/x.sock', '--listen', '127.0.0.1:0', '--listen-insecure', '--bpf-ct-timeout-regular-tcp-fin=3'],
      {},
    );
    assert.equal(c.backend, 'memory');
    assert.equal(c.bpfRoot, '/tmp/bpffs');
    assert.equal(c.socket, '/tmp/x.sock');
    assert.equal(c.listen, '127.0.0.1:0');
    assert.equal(c.bpfCtTimeoutRegularTcpFin, 3);
  });

  it('falls back to CTMAPD_* environment variables, flags win', () => {
    const env = { CTMAPD_BPF_CT_GLOBAL_TCP_MAX: '2048', CTMAPD_LOG_LEVEL: 'debug', CTMAPD_ENABLE_IPV6: 'false', CTMAPD_LISTEN: '[::1]:50051', CTMAPD_LISTEN_INSECURE: 'true' };
    const c = parseConfig([], env);
    assert.equal(c.bpfCtGlobalTcpMax, 2048);
    assert.equal(c.logLevel, 'debug');
    assert.equal(c.enableIpv6, false);
    assert.equal(c.listen, '[::1]:50051');
    assert.equal(parseConfig(['--bpf-ct-global-tcp-max=4096'], env).bpfCtGlobalTcpMax, 4096);
    assert.equal(parseConfig(['--enable-ipv6'], env).enableIpv6, true);
    // An empty variable counts as unset.
    assert.equal(parseConfig([], { CTMAPD_BACKEND: '' }).backend, 'auto');
  });

  it('derives every environment name from the flag', () => {
    assert.equal(envName('bpf-ct-timeout-regular-tcp-syn'), 'CTMAPD_BPF_CT_TIMEOUT_REGULAR_TCP_SYN');
    assert.equal(envName('--enable-ipv4'), 'CTMAPD_ENABLE_IPV4');
  });

  it('accepts the boolean forms', () => {
    assert.equal(parseConfig(['--enable-ipv4=false'], {}).enableIpv4, false);
    assert.equal(parseConfig(['--enable-ipv4', 'false'], {}).enableIpv4, false);
    assert.equal(parseConfig(['--no-enable-ipv4'], {}).enableIpv4, false);
    assert.equal(parseConfig(['--enable-ipv4'], { CTMAPD_ENABLE_IPV4: 'false' }).enableIpv4, true);
    assert.equal(parseConfig(['--bpf-distributed-lru'], {}).bpfDistributedLru, true);
    assert.equal(parseConfig(['--bpf-distributed-lru=1'], {}).bpfDistributedLru, true);
    assert.equal(parseConfig(['--allow-map-recreate'], {}).allowMapRecreate, true);
    assert.equal(parseConfig([], { CTMAPD_ALLOW_MAP_RECREATE: 'true' }).allowMapRecreate, true);
    rejects(['--allow-map-recreate=sometimes'], '--allow-map-recreate');
    rejects(['--enable-ipv4=maybe'], '--enable-ipv4');
    rejects(['--ct-events=some'], '--ct-events');
    rejects(['--ct-fill-up-share=0'], '--ct-fill-up-share');
    rejects(['--ct-fill-up-share=101'], '--ct-fill-up-share');
    rejects(['--ct-events-ring-size=12288'], '--ct-events-ring-size');
    rejects(['--ct-events-ring-size=2048'], '--ct-events-ring-size');
  });

  it('rejects disabling both families', () => {
    rejects(['--no-enable-ipv4', '--enable-ipv6=false'], '--enable-ipv4');
  });

  it('bounds the map sizes to [1024, 16Mi]', () => {
    for (const f of ['--bpf-ct-global-tcp-max', '--bpf-ct-global-any-max']) {
      assert.doesNotThrow(() => parseConfig([`${f}=${MAP_SIZE_MIN}`], {}));
      assert.doesNotThrow(() => parseConfig([`${f}=${MAP_SIZE_MAX}`], {}));
      rejects([`${f}=${MAP_SIZE_MIN - 1}`], f);
      rejects([`${f}=${MAP_SIZE_MAX + 1}`], f);
      for (const bad of ['abc', '-5', '1e5', '2048.5', '']) rejects([`${f}=${bad}`], f);
    }
    assert.equal(MAP_SIZE_MAX, 16777216);
  });

  it('names both the variable and the flag for a bad environment value', () => {
    const err = rejects([], '--bpf-ct-global-any-max', { CTMAPD_BPF_CT_GLOBAL_ANY_MAX: '12' });
    assert.match(err.message, /CTMAPD_BPF_CT_GLOBAL_ANY_MAX/);
    assert.equal(err.field, '--bpf-ct-global-any-max');
  });

  it('rejects invalid enum, duration, path and address values naming the flag', () => {
    rejects(['--backend=ebpf'], '--backend');
    rejects(['--log-level=verbose'], '--log-level');
    rejects(['--log-format=xml'], '--log-format');
    rejects(['--bpf-ct-timeout-regular-tcp=0'], '--bpf-ct-timeout-regular-tcp');
    rejects(['--bpf-ct-timeout-service-any=10 s'], '--bpf-ct-timeout-service-any');
    rejects(['--bpf-ct-timeout-service-any=10d'], '--bpf-ct-timeout-service-any');
    rejects(['--bpf-root=relative/dir'], '--bpf-root');
    rejects([`--socket=/tmp/${'x'.repeat(120)}`], '--socket');
    for (const bad of ['50051', 'host:65536', '::1:50051', 'host:']) rejects([`--listen=${bad}`], '--listen');
  });

  it('takes the TLS files, the authz policy and the read-only socket (issue 12)', () => {
    const c = parseConfig(
      [
        '--listen=127.0.0.1:50051',
        '--tls-cert-file=/etc/ctmapd/tls.crt',
        '--tls-key-file=/etc/ctmapd/tls.key',
        '--tls-client-ca-files=/etc/ctmapd/ca.crt, /etc/ctmapd/ca2.crt',
        '--authz-policy=/etc/ctmapd/authz.yaml',
        '--socket-readonly=/run/ctmapd/ro.sock',
        '--socket-readonly-mode=0666',
        '--socket-readonly-group=monitoring',
      ],
      {},
    );
    assert.equal(c.listenInsecure, false);
    assert.equal(c.tlsCertFile, '/etc/ctmapd/tls.crt');
    assert.equal(c.tlsKeyFile, '/etc/ctmapd/tls.key');
    assert.deepEqual(c.tlsClientCaFiles, ['/etc/ctmapd/ca.crt', '/etc/ctmapd/ca2.crt']);
    assert.equal(c.authzPolicy, '/etc/ctmapd/authz.yaml');
    assert.equal(c.socketReadonly, '/run/ctmapd/ro.sock');
    assert.equal(c.socketReadonlyMode, 0o666);
    assert.equal(c.socketReadonlyGroup, 'monitoring');
    assert.equal(parseConfig(['--socket-readonly=/r.sock', '--socket-readonly-group=991'], {}).socketReadonlyGroup, 991);
    assert.equal(parseConfig([], { CTMAPD_SOCKET_READONLY: '/r.sock' }).socketReadonlyMode, undefined, 'the server applies 0660');
    const env = { CTMAPD_LISTEN: '127.0.0.1:1', CTMAPD_TLS_CERT_FILE: '/c', CTMAPD_TLS_KEY_FILE: '/k', CTMAPD_TLS_CLIENT_CA_FILES: '/a,/b' };
    assert.deepEqual(parseConfig([], env).tlsClientCaFiles, ['/a', '/b']);
  });

  it('refuses a plaintext --listen without --listen-insecure, and TLS flags that do not go together', () => {
    const tls = ['--tls-cert-file=/c', '--tls-key-file=/k', '--tls-client-ca-files=/a'];
    const err = rejects(['--listen=127.0.0.1:50051'], '--listen');
    assert.equal(err.field, '--listen');
    assert.match(err.message, /--listen-insecure/);
    assert.equal(parseConfig(['--listen=127.0.0.1:50051', '--listen-insecure'], {}).listenInsecure, true);
    assert.equal(rejects(['--listen=127.0.0.1:1', '--tls-cert-file=/c', '--tls-client-ca-files=/a'], '--tls-key-file').field, '--tls-key-file');
    assert.equal(rejects(['--listen=127.0.0.1:1', '--tls-cert-file=/c', '--tls-key-file=/k'], '--tls-client-ca-files').field, '--tls-client-ca-files');
    assert.equal(rejects(tls, '--tls-cert-file').field, '--tls-cert-file'); // without --listen
    assert.equal(rejects(['--listen=127.0.0.1:1', '--listen-insecure', ...tls], '--listen-insecure').field, '--listen-insecure');
    assert.equal(rejects(['--listen-insecure'], '--listen-insecure').field, '--listen-insecure');
    assert.equal(rejects(['--listen=127.0.0.1:1', '--listen-insecure', '--authz-policy=/p.yaml'], '--authz-policy').field, '--authz-policy');
    rejects(['--listen=127.0.0.1:1', '--tls-cert-file=c.pem', '--tls-key-file=/k', '--tls-client-ca-files=/a'], '--tls-cert-file');
    rejects(['--listen=127.0.0.1:1', '--tls-cert-file=/c', '--tls-key-file=/k', '--tls-client-ca-files=/a,,/b'], '--tls-client-ca-files');
    rejects(['--listen=127.0.0.1:1', '--tls-cert-file=/c', '--tls-key-file=/k', '--tls-client-ca-files=/a,rel'], '--tls-client-ca-files');
  });

  it('checks the read-only socket flags', () => {
    rejects(['--socket-readonly-mode=0666'], '--socket-readonly-mode');
    rejects(['--socket-readonly-group=0'], '--socket-readonly-group');
    rejects(['--socket=/s.sock', '--socket-readonly=/s.sock'], '--socket-readonly');
    for (const bad of ['666x', '0o666', '1777', '66', '-1']) rejects(['--socket-readonly=/r.sock', `--socket-readonly-mode=${bad}`], '--socket-readonly-mode');
    for (const bad of ['-x', 'a b', '']) rejects(['--socket-readonly=/r.sock', `--socket-readonly-group=${bad}`], '--socket-readonly-group');
  });

  it('rejects unknown flags, missing values and arguments', () => {
    rejects(['--bpf-ct-global-max=1'], '--bpf-ct-global-max');
    rejects(['--backend'], '--backend');
    assert.throws(() => parseConfig(['extra'], {}), (e: unknown) => e instanceof ConfigError && e.exitCode === 2);
  });

  it('reports --help as exit code 0 with every flag and its variable', () => {
    let err: unknown;
    try {
      parseConfig(['--help'], {});
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof ConfigError);
    assert.equal(err.exitCode, 0);
    for (const name of ['--backend', '--bpf-ct-global-tcp-max', '--no-enable-ipv6', '--bpf-ct-timeout-regular-tcp-syn', 'CTMAPD_SOCKET']) {
      assert.ok(err.message.includes(name), `help lacks ${name}`);
    }
  });
});
