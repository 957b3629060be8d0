/**
 * bin/ctmapd: parse flags, start the daemon, stop cleanly on SIGTERM/SIGINT.
 * Exit codes: 0 clean stop, 1 start-up failure, 2 bad flags.
 */
import { CtmapError } from '../errors';
import { configOrExit } from './config';
import { startDaemon } from './daemon';
import { createLogger } from './logger';

export async function main(argv = process.argv.slice(2)): Promise<void> {
  const config = configOrExit(argv, process.env);
  const log = createLogger(config.logLevel, undefined, config.logFormat);
  let daemon;
  try {
    daemon = await startDaemon(config, log);
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
