/**
 * bin/ctmapd: parse flags, start the daemon, stop cleanly on SIGTERM/SIGINT.
 * Exit codes: 0 clean stop, 1 start-up failure, 2 bad flags.
 */
import { CtmapError } from '../errors';
import type { MigrationHooks, MigrationStep } from '../maps/lifecycle';
import { configOrExit } from '../config/config';
import { startDaemon } from './daemon';
import { Logger, createLogger } from './logger';

/**
 * Test-only migration hooks from the environment (not flags: nothing an operator should
 * set). CTMAPD_TEST_MIGRATION_DELAY_MS=<ms> sleeps after every copied batch, stretching a
 * migration so that a kill lands inside it; CTMAPD_TEST_MIGRATION_PAUSE=<step>[:<n>] stops
 * the migration for good at the n-th (default first) time any map reaches <step> (see
 * MigrationStep), after logging "test hook: migration paused", so a test can kill -9 the
 * daemon exactly there. Undefined when neither is set.
 */
export function testMigrationHooks(env: NodeJS.ProcessEnv, log: Logger): MigrationHooks | undefined {
  const delayMs = Number(env.CTMAPD_TEST_MIGRATION_DELAY_MS ?? 0);
  const [pauseStep, nth] = (env.CTMAPD_TEST_MIGRATION_PAUSE ?? '').split(':');
  if (!(delayMs > 0) && !pauseStep) return undefined;
  let remaining = nth ? Number(nth) : 1;
  return {
    async step(step: MigrationStep, map: string): Promise<void> {
      if (delayMs > 0 && (step === 'copy-batch' || step === 'delta-batch')) await new Promise((r) => setTimeout(r, delayMs));
      if (step === pauseStep && --remaining === 0) {
        log.warn({ map, step }, 'test hook: migration paused');
        // Never resolves; the interval keeps the process alive until it is killed.
        await new Promise(() => setInterval(() => undefined, 1 << 30));
      }
    },
  };
}

export async function main(argv = process.argv.slice(2)): Promise<void> {
  const config = configOrExit(argv, process.env);
  const log = createLogger(config.logLevel, undefined, config.logFormat);
  let daemon;
  try {
    daemon = await startDaemon(config, log, { migrationHooks: testMigrationHooks(process.env, log) });
  } catch (err) {
    const e = CtmapError.from(err);
    log.fatal({ err: e.cause ?? e }, `ctmapd cannot start: ${e.message}`);
    log.flush();
    process.exitCode = 1;
    return;
  }
  const onSignal = (signal: NodeJS.Signals): void => {
    log.info({ signal }, 'shutting down');
    void daemon.stop().finally(() => {
      log.flush();
      process.exit(0);
    });
  };
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
}
