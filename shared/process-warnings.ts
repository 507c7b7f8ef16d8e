/**
 * Node's own warnings (a deprecation; the AWS SDK's notice that it will need a newer Node)
 * print as several lines of plain text on stderr, in the middle of a JSON-lines log. Routed
 * here, each is one line instead: JSON for a log collector, or text when stderr is a terminal.
 */
export function routeProcessWarnings(stream: NodeJS.WriteStream = process.stderr): void {
  // Node prints warnings through a 'warning' listener of its own: removed, ours is the only one.
  process.removeAllListeners('warning');
  process.on('warning', (warning: Error & { code?: string }) => {
    const msg = warning.message.replace(/\s+/g, ' ').trim();
    const line = stream.isTTY
      ? `cachewarm: warning: ${warning.name}: ${msg}`
      : JSON.stringify({ time: new Date().toISOString(), level: 'warn', event: 'process-warning', name: warning.name, code: warning.code, msg });
    stream.write(`${line}\n`);
  });
}
