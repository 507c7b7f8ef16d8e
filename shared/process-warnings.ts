import type { Log } from './log.js';

/**
 * Node's own warnings (a deprecation; the AWS SDK's notice that it will need a newer Node)
 * print as several lines of plain text on stderr, in the middle of a JSON-lines log. Routed
 * here, each is one `process-warning` entry of the process's log instead.
 */
export function routeProcessWarnings(log: Log): void {
  // Node prints warnings through a 'warning' listener of its own: removed, ours is the only one.
  process.removeAllListeners('warning');
  process.on('warning', (warning: Error & { code?: string }) => {
    log({ event: 'process-warning', level: 'warn', name: warning.name, code: warning.code, msg: warning.message.replace(/\s+/g, ' ').trim() });
  });
}
