import { Reply, lineEnd, lineText, protocolError } from './connection.js';
import { writeAscii, writeDecimal, writeKey } from './ascii.js';
import { isRawSafeKey } from './keys.js';
import { type WrittenItem, casOfReply } from './meta-add.js';

/**
 * Builds pipelined `mg <key> u` commands: no value, no flags asked, and `u` leaves the item
 * where it is in the LRU. The cheapest question memcached answers: is the key there (HD) or
 * not (EN).
 */
export function buildMetaExists(keys: readonly Buffer[]): Buffer {
  return buildMetaGets(keys, 'u');
}

/** Builds pipelined `mg <key> c`: the CAS of each key's item (HD c<cas>), or EN. */
export function buildMetaCas(keys: readonly Buffer[]): Buffer {
  return buildMetaGets(keys, 'c');
}

function buildMetaGets(keys: readonly Buffer[], flag: 'u' | 'c'): Buffer {
  let bound = 0;
  for (const key of keys) bound += key.length * 2 + 12;
  const buf = Buffer.allocUnsafe(bound);
  let at = 0;
  for (const key of keys) {
    const raw = isRawSafeKey(key);
    at = writeAscii(buf, at, 'mg ');
    at = writeKey(buf, at, key, raw);
    at = writeAscii(buf, at, raw ? ` ${flag}\r\n` : ` ${flag} b\r\n`);
  }
  return buf.subarray(0, at);
}

// A meta reply's two-letter status, as one number.
const HD = 0x4844;
const EN = 0x454e;
const EX = 0x4558;
const NF = 0x4e46;

/** Reads `count` one-line replies to pipelined meta commands, each counted by its status. */
abstract class StatusReplies<T> extends Reply<T> {
  private seen = 0;

  constructor(
    private readonly count: number,
    private readonly label: string,
    private readonly command: string,
    protected readonly result: T,
  ) {
    super();
    if (count === 0) this.finish(result);
  }

  /** Counts the reply to the `index`th command (its line is buf[pos, end)); false for a status that command never gives. */
  protected abstract take(status: number, index: number, buf: Buffer, pos: number, end: number): boolean;

  read(buf: Buffer, pos: number): number {
    while (this.seen < this.count) {
      const end = lineEnd(buf, pos);
      if (end < 0) return pos;
      const status = ((buf[pos] as number) << 8) | (buf[pos + 1] as number);
      if (!this.take(status, this.seen, buf, pos, end)) throw protocolError(this.label, `unexpected reply to ${this.command}`, lineText(buf, pos, end));
      this.seen++;
      pos = end;
    }
    this.finish(this.result);
    return pos;
  }
}

/** Reads `count` replies to `mg <key> u`: resolves with the indices of the keys not there. */
export class MetaExistsReplies extends StatusReplies<number[]> {
  constructor(count: number, label: string) {
    super(count, label, 'mg', []);
  }

  protected take(status: number, index: number): boolean {
    if (status === EN) this.result.push(index);
    return status === EN || status === HD;
  }
}

/** Reads `count` replies to `mg <key> c`: resolves with each key's CAS, undefined where it is not there. */
export class MetaCasReplies extends StatusReplies<(number | undefined)[]> {
  constructor(count: number, label: string) {
    super(count, label, 'mg', []);
  }

  protected take(status: number, index: number, buf: Buffer, pos: number): boolean {
    if (status === EN) {
      this.result[index] = undefined;
      return true;
    }
    const cas = status === HD ? casOfReply(buf, pos) : undefined;
    this.result[index] = cas;
    return cas !== undefined;
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
export class MetaDeleteReplies extends StatusReplies<DeleteOutcome> {
  constructor(count: number, label: string) {
    super(count, label, 'md', newDeleteOutcome());
  }

  protected take(status: number): boolean {
    if (status === HD) this.result.removed++;
    else if (status === EX) this.result.kept++;
    else if (status === NF) this.result.alreadyGone++;
    else return false;
    return true;
  }
}
