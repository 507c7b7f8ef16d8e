import { Reply, lineEnd, lineText, protocolError } from './connection.js';
import { writeAscii, writeDecimal, writeKey } from './ascii.js';
import { isRawSafeKey } from './keys.js';
import type { WrittenItem } from './meta-add.js';

/**
 * Builds pipelined `mg <key> u` commands: no value, no flags asked, and `u` leaves the item
 * where it is in the LRU. The cheapest question memcached answers: is the key there (HD) or
 * not (EN).
 */
export function buildMetaExists(keys: readonly Buffer[]): Buffer {
  let bound = 0;
  for (const key of keys) bound += key.length * 2 + 12;
  const buf = Buffer.allocUnsafe(bound);
  let at = 0;
  for (const key of keys) {
    const raw = isRawSafeKey(key);
    at = writeAscii(buf, at, 'mg ');
    at = writeKey(buf, at, key, raw);
    at = writeAscii(buf, at, raw ? ' u\r\n' : ' u b\r\n');
  }
  return buf.subarray(0, at);
}

/** Reads `count` replies to `mg <key> u`: resolves with the indices of the keys not there. */
export class MetaExistsReplies extends Reply<number[]> {
  private seen = 0;
  private readonly absent: number[] = [];

  constructor(
    private readonly count: number,
    private readonly label: string,
  ) {
    super();
    if (count === 0) this.finish(this.absent);
  }

  read(buf: Buffer, pos: number): number {
    while (this.seen < this.count) {
      const end = lineEnd(buf, pos);
      if (end < 0) return pos;
      const c0 = buf[pos];
      const c1 = buf[pos + 1];
      if (c0 === 0x45 && c1 === 0x4e) this.absent.push(this.seen);
      else if (c0 !== 0x48 || c1 !== 0x44) throw protocolError(this.label, 'unexpected reply to mg', lineText(buf, pos, end));
      this.seen++;
      pos = end;
    }
    this.finish(this.absent);
    return pos;
  }
}

/**
 * Builds pipelined `md <key> C<cas>` commands: each deletes its item only if it is still the
 * one stored with that CAS (unchanged since the warm's add).
 */
export function buildMetaDeletesIfUnchanged(items: readonly WrittenItem[]): Buffer {
  let bound = 0;
  for (const item of items) bound += item.key.length * 2 + 36;
  const buf = Buffer.allocUnsafe(bound);
  let at = 0;
  for (const { key, cas } of items) {
    const raw = isRawSafeKey(key);
    at = writeAscii(buf, at, 'md ');
    at = writeKey(buf, at, key, raw);
    at = writeAscii(buf, at, ' C');
    at = writeDecimal(buf, at, cas);
    at = writeAscii(buf, at, raw ? '\r\n' : ' b\r\n');
  }
  return buf.subarray(0, at);
}

/** What conditional deletes did. */
export interface DeleteOutcome {
  /** Deleted: the item was the one written. */
  removed: number;
  /** Not deleted: the item changed since it was written (EX: another CAS). */
  kept: number;
  /** Nothing to delete: the key was gone already (deleted, evicted or expired). */
  alreadyGone: number;
}

export const newDeleteOutcome = (): DeleteOutcome => ({ removed: 0, kept: 0, alreadyGone: 0 });

/** Reads `count` replies to `md <key> C<cas>`: HD deleted, EX changed since, NF not there. */
export class MetaDeleteReplies extends Reply<DeleteOutcome> {
  private seen = 0;
  private readonly outcome = newDeleteOutcome();

  constructor(
    private readonly count: number,
    private readonly label: string,
  ) {
    super();
    if (count === 0) this.finish(this.outcome);
  }

  read(buf: Buffer, pos: number): number {
    while (this.seen < this.count) {
      const end = lineEnd(buf, pos);
      if (end < 0) return pos;
      const c0 = buf[pos];
      const c1 = buf[pos + 1];
      if (c0 === 0x48 && c1 === 0x44) this.outcome.removed++;
      else if (c0 === 0x45 && c1 === 0x58) this.outcome.kept++;
      else if (c0 === 0x4e && c1 === 0x46) this.outcome.alreadyGone++;
      else throw protocolError(this.label, 'unexpected reply to md', lineText(buf, pos, end));
      this.seen++;
      pos = end;
    }
    this.finish(this.outcome);
    return pos;
  }
}
