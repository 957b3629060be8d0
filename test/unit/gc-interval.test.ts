import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { initialInterval, maxIntervalSeconds, nextInterval, type IntervalInput } from '../../src/maps/ctmap/gc/interval';
import { GC_INITIAL_INTERVAL_SECONDS, GC_MAX_INTERVAL_SECONDS, GC_MIN_INTERVAL_SECONDS } from '../../src/config/defaults';

interface Vector {
  readonly name: string;
  readonly input: IntervalInput;
  readonly want: number;
}

// Every expected value is worked out by hand in its comment (facts §6):
//   r > 0.25 -> max(round(prev × (1 − min(r, 0.9))), 10)
//   r < 0.05 -> round(prev × 1.5)
//   else     -> prev
// then min(…, max); early run (0 < elapsed < prev): r ×= prev / elapsed; fixed wins.
const VECTORS: readonly Vector[] = [
  // The example in the facts: 60 × (1 − 0.40) = 36.
  { name: 'facts example', input: { previousSeconds: 60, ratio: 0.4 }, want: 36 },
  // 300 × 0.6 = 180.
  { name: 'shrink', input: { previousSeconds: 300, ratio: 0.4 }, want: 180 },
  // 0.25 is not > 0.25: unchanged.
  { name: 'exactly 0.25 keeps', input: { previousSeconds: 300, ratio: 0.25 }, want: 300 },
  // 300 × (1 − 0.26) = 222.
  { name: 'just above 0.25 shrinks', input: { previousSeconds: 300, ratio: 0.26 }, want: 222 },
  // 0.05 is not < 0.05: unchanged.
  { name: 'exactly 0.05 keeps', input: { previousSeconds: 300, ratio: 0.05 }, want: 300 },
  // 300 × 1.5 = 450.
  { name: 'just below 0.05 grows', input: { previousSeconds: 300, ratio: 0.049 }, want: 450 },
  // Nothing deleted: 300 × 1.5 = 450.
  { name: 'ratio 0 grows', input: { previousSeconds: 300, ratio: 0 }, want: 450 },
  // Between the thresholds: unchanged.
  { name: 'middle band keeps', input: { previousSeconds: 120, ratio: 0.1 }, want: 120 },
  // 0.9 exactly: 1000 × 0.1 = 100 (99.99999999999997 in floating point, rounded).
  { name: 'ratio 0.9', input: { previousSeconds: 1000, ratio: 0.9 }, want: 100 },
  // 0.95 clamps to 0.9: 1000 × 0.1 = 100, not 1000 × 0.05 = 50.
  { name: '0.9 clamp', input: { previousSeconds: 1000, ratio: 0.95 }, want: 100 },
  // 1.0 (everything deleted) clamps to 0.9 as well: 100.
  { name: 'ratio 1 clamps', input: { previousSeconds: 1000, ratio: 1 }, want: 100 },
  // 60 × 0.1 = 6 -> floor 10.
  { name: '10 s floor', input: { previousSeconds: 60, ratio: 0.9 }, want: 10 },
  // 20 × 0.5 = 10: exactly on the floor.
  { name: 'lands on the floor', input: { previousSeconds: 20, ratio: 0.5 }, want: 10 },
  // 15 × 0.5 = 7.5 -> round 8 -> floor 10.
  { name: 'rounded then floored', input: { previousSeconds: 15, ratio: 0.5 }, want: 10 },
  // Already at the floor and still shrinking: 10 × 0.1 = 1 -> 10.
  { name: 'stays at the floor', input: { previousSeconds: 10, ratio: 0.9 }, want: 10 },
  // 30000 × 1.5 = 45000 -> cap 43200 (12 h).
  { name: '12 h cap', input: { previousSeconds: 30000, ratio: 0.01 }, want: 43200 },
  // 43200 × 1.5 = 64800 -> 43200.
  { name: 'stays at the cap', input: { previousSeconds: 43200, ratio: 0 }, want: 43200 },
  // 28800 × 1.5 = 43200: exactly the cap.
  { name: 'lands on the cap', input: { previousSeconds: 28800, ratio: 0 }, want: 43200 },
  // --conntrack-gc-max-interval=600: 500 × 1.5 = 750 -> 600.
  { name: 'lower max caps growth', input: { previousSeconds: 500, ratio: 0, maxSeconds: 600 }, want: 600 },
  // Max lowered below prev: the unchanged 300 is still capped to 120.
  { name: 'lower max caps an unchanged interval', input: { previousSeconds: 300, ratio: 0.1, maxSeconds: 120 }, want: 120 },
  // Shrink to 1000 × 0.5 = 500, still above max 100 -> 100.
  { name: 'lower max caps a shrink', input: { previousSeconds: 1000, ratio: 0.5, maxSeconds: 100 }, want: 100 },
  // Max may equal the floor: 300 × 1.5 = 450 -> 10.
  { name: 'max at the floor', input: { previousSeconds: 300, ratio: 0, maxSeconds: 10 }, want: 10 },
  // 33 × 1.5 = 49.5 -> 50 (half rounds up).
  { name: 'rounding half up (grow)', input: { previousSeconds: 33, ratio: 0.01 }, want: 50 },
  // 99 × 0.5 = 49.5 -> 50.
  { name: 'rounding half up (shrink)', input: { previousSeconds: 99, ratio: 0.5 }, want: 50 },
  // 41 × 0.7 = 28.7 -> 29.
  { name: 'rounding up', input: { previousSeconds: 41, ratio: 0.3 }, want: 29 },
  // 301 × 0.7 = 210.7 -> 211.
  { name: 'rounding up 2', input: { previousSeconds: 301, ratio: 0.3 }, want: 211 },
  // 27 × 0.6 = 16.2 -> 16.
  { name: 'rounding down', input: { previousSeconds: 27, ratio: 0.4 }, want: 16 },
  // Early run: 0.1 × 300/60 = 0.5 -> 300 × 0.5 = 150 (without the correction: 300).
  { name: 'early run scales the ratio', input: { previousSeconds: 300, ratio: 0.1, elapsedSeconds: 60 }, want: 150 },
  // Early run landing exactly on 0.25: 0.125 × 300/150 = 0.25 -> unchanged.
  { name: 'early run onto 0.25', input: { previousSeconds: 300, ratio: 0.125, elapsedSeconds: 150 }, want: 300 },
  // Early run still below 0.05: 0.01 × 300/100 = 0.03 -> 450.
  { name: 'early run still grows', input: { previousSeconds: 300, ratio: 0.01, elapsedSeconds: 100 }, want: 450 },
  // 1 s after the last pass: 0.02 × 300 = 6 -> clamp 0.9 -> 300 × 0.1 = 30.
  { name: 'early run clamps', input: { previousSeconds: 300, ratio: 0.02, elapsedSeconds: 1 }, want: 30 },
  // Not early (elapsed = prev): no correction, 0.1 keeps 300.
  { name: 'on time: no correction', input: { previousSeconds: 300, ratio: 0.1, elapsedSeconds: 300 }, want: 300 },
  // Late (elapsed > prev): no correction either (the ratio is never scaled down).
  { name: 'late: no correction', input: { previousSeconds: 300, ratio: 0.3, elapsedSeconds: 600 }, want: 210 },
  // elapsed 0 would divide by zero: ignored, 0.1 keeps 300.
  { name: 'elapsed 0: no correction', input: { previousSeconds: 300, ratio: 0.1, elapsedSeconds: 0 }, want: 300 },
  // Fixed interval: whatever the ratio…
  { name: 'fixed ignores the ratio', input: { previousSeconds: 300, ratio: 0.9, fixedSeconds: 120 }, want: 120 },
  // …and whatever the max (the operator asked for it).
  { name: 'fixed ignores the max', input: { previousSeconds: 300, ratio: 0, fixedSeconds: 86400, maxSeconds: 600 }, want: 86400 },
  // …and an early run.
  { name: 'fixed ignores an early run', input: { previousSeconds: 300, ratio: 0.2, elapsedSeconds: 1, fixedSeconds: 45 }, want: 45 },
];

describe('nextInterval', () => {
  for (const v of VECTORS) {
    it(v.name, () => assert.equal(nextInterval(v.input), v.want));
  }

  it('returns whole seconds', () => {
    for (let prev = 10; prev <= 2000; prev += 7) {
      for (const ratio of [0, 0.01, 0.049, 0.05, 0.1, 0.25, 0.251, 0.3, 0.33, 0.5, 0.77, 0.9, 1]) {
        const got = nextInterval({ previousSeconds: prev, ratio });
        assert.ok(Number.isInteger(got), `${prev} ${ratio} -> ${got}`);
        assert.ok(got >= GC_MIN_INTERVAL_SECONDS && got <= GC_MAX_INTERVAL_SECONDS, `${prev} ${ratio} -> ${got}`);
      }
    }
  });

  it('settles: a full map shrinks to the floor, an idle one grows to the cap', () => {
    let shrinking = GC_INITIAL_INTERVAL_SECONDS;
    let growing = GC_INITIAL_INTERVAL_SECONDS;
    for (let i = 0; i < 50; i++) {
      shrinking = nextInterval({ previousSeconds: shrinking, ratio: 0.5 });
      growing = nextInterval({ previousSeconds: growing, ratio: 0 });
    }
    assert.equal(shrinking, GC_MIN_INTERVAL_SECONDS);
    assert.equal(growing, GC_MAX_INTERVAL_SECONDS);
  });

  it('rejects nonsense', () => {
    assert.throws(() => nextInterval({ previousSeconds: 0, ratio: 0 }), RangeError);
    assert.throws(() => nextInterval({ previousSeconds: 300, ratio: -0.1 }), RangeError);
    assert.throws(() => nextInterval({ previousSeconds: 300, ratio: Number.NaN }), RangeError);
    assert.throws(() => nextInterval({ previousSeconds: 300, ratio: 0, elapsedSeconds: -1 }), RangeError);
    assert.throws(() => nextInterval({ previousSeconds: 300, ratio: 0, maxSeconds: 9 }), RangeError);
    assert.throws(() => nextInterval({ previousSeconds: 300, ratio: 0, fixedSeconds: 0 }), RangeError);
  });
});

describe('initialInterval', () => {
  it('is 5 min, the fixed interval, or the max when lower', () => {
    assert.equal(initialInterval(), 300);
    assert.equal(initialInterval({ maxSeconds: 3600 }), 300);
    assert.equal(initialInterval({ maxSeconds: 60 }), 60);
    assert.equal(initialInterval({ fixedSeconds: 45, maxSeconds: 20 }), 45);
  });

  it('maxIntervalSeconds defaults to 12 h', () => {
    assert.equal(maxIntervalSeconds(), 43200);
    assert.equal(maxIntervalSeconds(600), 600);
  });
});
