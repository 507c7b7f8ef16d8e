import { Reply, lineEnd, lineText, protocolError } from './connection.js';
import type { BufferPool } from '../buffer-pool.js';
import { writeAscii, writeKey } from './ascii.js';
import { isRawSafeKey } from './keys.js';

/** What a pipelined fetch reports, item by item, in the order the keys were given. */
export interface FetchSink {
  /** `value` is only valid during the call: copy what you keep. `ttlSeconds` is -1 for no expiry. */
  hit(index: number, value: Buffer, flags: number, ttlSeconds: number): void;
  /**
   * Optional, instead of `hit`: the value is buf[start, end), valid only during the call. For
   * a sink that copies every value (the dumper), this spares a view per item.
   */
  hitAt?(index: number, buf: Buffer, start: number, end: number, flags: number, ttlSeconds: number): void;
  miss(index: number): void;
}

/** Builds one buffer of pipelined `mg <key> v f t u` commands for keys[start, end). */
export function buildMetaGets(keys: readonly Buffer[], start: number, end: number, pool?: BufferPool): Buffer {
  let bound = 0;
  for (let i = start; i < end; i++) bound += (keys[i] as Buffer).length * 2 + 16;
  const buf = pool ? pool.acquire(bound) : Buffer.allocUnsafe(bound);
  let at = 0;
  for (let i = start; i < end; i++) {
    const key = keys[i] as Buffer;
    const raw = isRawSafeKey(key);
    at = writeAscii(buf, at, 'mg ');
    at = writeKey(buf, at, key, raw);
    // `v f t` return value, client flags and remaining TTL; `u` leaves the item where it is
    // in the LRU, so a warm does not make every item of the source look freshly used.
    at = writeAscii(buf, at, raw ? ' v f t u\r\n' : ' v f t u b\r\n');
  }
  return buf.subarray(0, at);
}

/** Reads `count` pipelined `mg ... v f t` replies: `VA <len> f<flags> t<ttl>` + data, or `EN`. */
export class MetaGetReplies extends Reply<void> {
  private index = 0;

  constructor(
    private readonly count: number,
    private readonly sink: FetchSink,
    private readonly label: string,
  ) {
    super();
    if (count === 0) this.finish();
  }

  read(buf: Buffer, pos: number): number {
    while (this.index < this.count) {
      const end = lineEnd(buf, pos);
      if (end < 0) return pos;
      const c0 = buf[pos];
      const c1 = buf[pos + 1];
      if (c0 === 0x45 && c1 === 0x4e) {
        // EN: miss (gone, or expired since the crawl saw it)
        this.sink.miss(this.index++);
        pos = end;
        continue;
      }
      if (c0 !== 0x56 || c1 !== 0x41) throw protocolError(this.label, 'unexpected reply to mg', lineText(buf, pos, end));
      // VA <len> <flags>*\r\n
      let i = pos + 3;
      let length = 0;
      for (let b = buf[i] as number; b >= 0x30 && b <= 0x39; b = buf[++i] as number) length = length * 10 + (b - 0x30);
      let flags = 0;
      let ttl = -1;
      while (i < end) {
        const b = buf[i] as number;
        if (b === 0x20) {
          const tag = buf[i + 1];
          i += 2;
          let negative = false;
          if (buf[i] === 0x2d) {
            negative = true;
            i++;
          }
          let n = 0;
          for (let d = buf[i] as number; d >= 0x30 && d <= 0x39; d = buf[++i] as number) n = n * 10 + (d - 0x30);
          if (tag === 0x66) flags = n;
          else if (tag === 0x74) ttl = negative ? -n : n;
        } else {
          i++;
        }
      }
      const dataEnd = end + length + 2;
      if (dataEnd > buf.length) {
        this.wantBytes = dataEnd - pos;
        return pos;
      }
      if (this.sink.hitAt) this.sink.hitAt(this.index++, buf, end, end + length, flags >>> 0, ttl);
      else this.sink.hit(this.index++, buf.subarray(end, end + length), flags >>> 0, ttl);
      pos = dataEnd;
    }
    this.finish();
    return pos;
  }
}
