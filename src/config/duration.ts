/**
 * Cilium's duration syntax for ctmapd's time flags: Go's time.ParseDuration ("1h",
 * "5m30s", "2h13m20s", "1.5h", "300ms"), as Cilium's agent takes --conntrack-gc-interval
 * and the --bpf-ct-timeout-* flags, beside ctmapd's plain seconds ("3600"). The flags hold
 * whole seconds (the datapath's clock has no finer grain), so a duration with a fraction of
 * a second left over is refused rather than rounded.
 */

/** Go's units, in nanoseconds (time.ParseDuration's unitMap; "µs" and "μs" both micro). */
const UNIT_NS: Readonly<Record<string, bigint>> = {
  ns: 1n,
  us: 1_000n,
  'µs': 1_000n,
  'μs': 1_000n,
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60_000_000_000n,
  h: 3_600_000_000_000n,
};

const NS_PER_SECOND = 1_000_000_000n;
const PART = /^(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)/u;

/**
 * Whole seconds of `text`: plain digits are seconds; otherwise a sequence of
 * <decimal><unit> parts, Go-style, with no sign (a negative time means nothing here). Throws
 * an Error whose message completes "<flag>: ..." for anything else, or a duration that is
 * not a whole number of seconds.
 */
export function parseDurationSeconds(text: string): number {
  const v = text.trim();
  if (/^\d+$/.test(v)) return Number(v);
  if (v === '') throw new Error(`want seconds or a duration such as 1h, 5m30s, got ${JSON.stringify(text)}`);
  let rest = v;
  let total = 0n; // nanoseconds, exact: "0.1s" is 100,000,000 ns, not a binary fraction
  while (rest.length > 0) {
    const m = PART.exec(rest);
    if (!m) throw new Error(`want seconds or a duration such as 1h, 5m30s (units h, m, s, ms, us, ns), got ${JSON.stringify(text)}`);
    const [whole, frac = ''] = m[1].split('.');
    const unit = UNIT_NS[m[2]];
    const scale = 10n ** BigInt(frac.length);
    // value = (whole + frac / 10^len) * unit; a fraction finer than a nanosecond is dropped, as Go does.
    total += BigInt(whole || '0') * unit + (BigInt(frac || '0') * unit) / scale;
    rest = rest.slice(m[0].length);
  }
  if (total % NS_PER_SECOND !== 0n) throw new Error(`${JSON.stringify(text)} is not a whole number of seconds`);
  const seconds = total / NS_PER_SECOND;
  if (seconds > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${JSON.stringify(text)} is too long`);
  return Number(seconds);
}
