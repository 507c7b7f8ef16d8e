import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const module = fileURLToPath(new URL('../shared/process-warnings.js', import.meta.url));
const log = fileURLToPath(new URL('../shared/log.js', import.meta.url));

describe("Node's process warnings", () => {
  test('reach a log stream as one JSON line each, not as several lines of text', async () => {
    // What the AWS SDK does on Node 20: a warning whose message spans lines.
    const script = `const { routeProcessWarnings } = await import(${JSON.stringify(module)});
      const { createLogger, logTo } = await import(${JSON.stringify(log)});
      routeProcessWarnings(logTo(createLogger({ format: 'json' })));
      process.emitWarning('versions published after January 2027\\nwill require node >=22.', 'NodeVersionSupportWarning');`;
    const { stderr } = await run(process.execPath, ['--input-type=module', '-e', script]);
    const lines = stderr.trimEnd().split('\n');
    assert.equal(lines.length, 1, stderr);
    const entry = JSON.parse(lines[0] as string) as Record<string, unknown>;
    assert.deepEqual(
      { level: entry['level'], event: entry['event'], name: entry['name'], msg: entry['msg'] },
      { level: 'warn', event: 'process-warning', name: 'NodeVersionSupportWarning', msg: 'versions published after January 2027 will require node >=22.' },
    );
  });
});
