import { type Endpoint, MemcachedConnection, Reply, lineEnd, lineText, protocolError } from './connection.js';

/** Reads text lines up to and including a terminator line (`END`), e.g. for `stats`. */
class LinesUntil extends Reply<string[]> {
  private readonly lines: string[] = [];

  constructor(
    private readonly terminator: string,
    private readonly label: string,
  ) {
    super();
  }

  read(buf: Buffer, pos: number): number {
    for (;;) {
      const end = lineEnd(buf, pos);
      if (end < 0) return pos;
      const line = lineText(buf, pos, end);
      pos = end;
      if (line === this.terminator) {
        this.finish(this.lines);
        return pos;
      }
      if (line === 'ERROR' || line.startsWith('CLIENT_ERROR') || line.startsWith('SERVER_ERROR')) {
        throw protocolError(this.label, 'command refused', line);
      }
      this.lines.push(line);
    }
  }
}

/** Reads exactly one line. */
export class OneLine extends Reply<string> {
  read(buf: Buffer, pos: number): number {
    const end = lineEnd(buf, pos);
    if (end < 0) return pos;
    this.finish(lineText(buf, pos, end));
    return end;
  }
}

export async function version(conn: MemcachedConnection): Promise<string> {
  const line = await conn.send(Buffer.from('version\r\n'), new OneLine());
  if (!line.startsWith('VERSION ')) throw protocolError(conn.label, 'unexpected reply to version', line);
  return line.slice('VERSION '.length);
}

/** `stats` as a name → value map (values as memcached printed them). */
export async function stats(conn: MemcachedConnection, group = ''): Promise<Map<string, string>> {
  const command = group ? `stats ${group}\r\n` : 'stats\r\n';
  const lines = await conn.send(Buffer.from(command), new LinesUntil('END', conn.label));
  const result = new Map<string, string>();
  for (const line of lines) {
    const [tag, name, ...rest] = line.split(' ');
    if (tag === 'STAT' && name) result.set(name, rest.join(' '));
  }
  return result;
}

/** `stats` (or `stats <group>`) on a short-lived connection of its own. */
export async function statsAt(
  endpoint: Endpoint,
  connect: (endpoint: Endpoint, signal?: AbortSignal) => Promise<MemcachedConnection> = (e, signal) =>
    MemcachedConnection.connect(e, { signal }),
  signal?: AbortSignal,
  group = '',
): Promise<Map<string, string>> {
  const conn = await connect(endpoint, signal);
  try {
    return await stats(conn, group);
  } finally {
    conn.close();
  }
}

/** Compares dotted versions: negative when a < b. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((p) => Number.parseInt(p, 10) || 0);
  const pb = b.split(/[.-]/).map((p) => Number.parseInt(p, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}
