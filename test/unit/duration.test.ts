/**
 * Cilium's (Go's) duration syntax for the time flags: the cases Go's time.ParseDuration
 * documents, plain seconds, and what whole-second flags must refuse.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDurationSeconds } from '../../src/config/duration';
import { parseConfig } from '../../src/config/config';

test('durations read as Go reads them, in whole seconds', () => {
  const cases: Array<[string, number]> = [
    ['3600', 3600],
    ['0', 0],
    ['1h', 3600],
    ['5m30s', 330],
    ['2h13m20s', 8000],
    ['1.5h', 5400],
    ['.5m', 30],
    ['1500ms', NaN], // not whole
    ['2000ms', 2],
    ['1s1000ms', 2],
    ['3000000us', 3],
    ['3000000µs', 3],
    ['1000000000ns', 1],
    ['0.1s9.9s', 10], // exact decimal arithmetic: 0.1 + 9.9 is 10, not 9.999…
    ['  90s ', 90],
  ];
  for (const [text, want] of cases) {
    if (Number.isNaN(want)) assert.throws(() => parseDurationSeconds(text), /not a whole number of seconds/, text);
    else assert.equal(parseDurationSeconds(text), want, text);
  }
});

test('what is not a duration is refused with the text quoted', () => {
  for (const bad of ['', '1d', 'h', '-1h', '+5s', '1h-5m', '1 h', '5m30', 'ms', '1e3s', '0x10s']) {
    assert.throws(() => parseDurationSeconds(bad), (err: Error) => err.message.includes(JSON.stringify(bad)), bad);
  }
});

test('--conntrack-gc-interval=1h and =3600 configure the same interval; a bad duration names the flag', () => {
  assert.equal(parseConfig(['--conntrack-gc-interval=1h'], {}).conntrackGcInterval, 3600);
  assert.equal(parseConfig(['--conntrack-gc-interval=3600'], {}).conntrackGcInterval, 3600);
  assert.equal(parseConfig([], { CTMAPD_CONNTRACK_GC_INTERVAL: '1h' }).conntrackGcInterval, 3600);
  assert.equal(parseConfig(['--bpf-ct-timeout-regular-tcp=2h13m20s'], {}).bpfCtTimeoutRegularTcp, 8000);
  assert.equal(parseConfig(['--conntrack-gc-max-interval=12h'], {}).conntrackGcMaxInterval, 43200);
  for (const [argv, flag] of [
    [['--conntrack-gc-interval=1d'], '--conntrack-gc-interval'],
    [['--conntrack-gc-interval=0s'], '--conntrack-gc-interval'],
    [['--conntrack-gc-max-interval=5s'], '--conntrack-gc-max-interval'],
    [['--bpf-ct-timeout-regular-tcp-fin=1.5s'], '--bpf-ct-timeout-regular-tcp-fin'],
  ] as const) {
    assert.throws(
      () => parseConfig([...argv], {}),
      (err: Error & { exitCode?: number }) => err.exitCode === 2 && err.message.includes(flag),
      argv.join(' '),
    );
  }
});
