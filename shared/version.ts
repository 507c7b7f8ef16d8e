import { readFileSync } from 'node:fs';

/**
 * This build's version, from package.json (two levels above dist/shared/, as in the package):
 * what `--version` prints, and what start-up log lines, `--json` summaries and the
 * `cachewarm_build_info` metric carry, so a log or a dashboard says which build did what.
 */
export const VERSION: string = readVersion();

function readVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}
