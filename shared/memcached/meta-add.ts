import { Reply, lineEnd, lineText, protocolError } from './connection.js';
import type { BufferPool } from '../buffer-pool.js';
import { keyToken, writeAscii, writeDecimal } from './ascii.js';
import { isRawSafeKey } from './keys.js';

/** An item as it is written to a target: absolute expiry in unix seconds, 0 for none. */
export interface WritableItem {
  readonly key: Buffer;
  readonly value: Buffer;
  readonly flags: number;
  readonly exptime: number;
}

/** Why a target refused an item: it answered, so only that item is lost. */
export type RefusalReason = 'tooLarge' | 'outOfMemory' | 'serverError';

export interface Refusal {
  readonly item: WritableItem;
  readonly reason: RefusalReason;
  /** What the server said, e.g. `SERVER_ERROR object too large for cache`. */
  readonly message: string;
}

export interface AddOutcome {
  stored: number;
  /** The target already held the key: left as it was, by design. */
  existed: number;
  /** Items memcached refused, each with its reason: the caller decides whether to retry them. */
  refused: Refusal[];
}

export const newAddOutcome = (): AddOutcome => ({ stored: 0, existed: 0, refused: [] });

/** memcached's text-protocol refusals, by the words it uses (1.6: proto_text.c / proto_proxy). */
export function refusalReason(message: string): RefusalReason {
  if (/too large/i.test(message)) return 'tooLarge';
  if (/out of memory/i.test(message)) return 'outOfMemory';
  return 'serverError';
}

/**
 * Builds pipelined `ms <key> <len> ME F<flags> T<exptime>` commands: mode E is add, so an
 * item the target already holds (written by live traffic during the warm) is never replaced.
 * The expiry is written as an absolute unix time, which memcached takes as such for any
 * value above 30 days: it stays exact however long the item waited in a chunk.
 * One buffer for the whole batch, written in place: this runs for every item of a warm.
 */
export function buildMetaAdds(items: readonly WritableItem[], pool?: BufferPool): Buffer {
  let bound = 0;
  for (const item of items) bound += item.key.length * 2 + item.value.length + 64;
  const buf = pool ? pool.acquire(bound) : Buffer.allocUnsafe(bound);
  let at = 0;
  for (const item of items) {
    const raw = isRawSafeKey(item.key);
    at = writeAscii(buf, at, 'ms ');
    at += keyToken(item.key, raw).copy(buf, at);
    buf[at++] = 0x20;
    at = writeDecimal(buf, at, item.value.length);
    at = writeAscii(buf, at, ' ME F');
    at = writeDecimal(buf, at, item.flags >>> 0);
    if (item.exptime > 0) {
      at = writeAscii(buf, at, ' T');
      at = writeDecimal(buf, at, item.exptime);
    }
    if (!raw) at = writeAscii(buf, at, ' b');
    at = writeAscii(buf, at, '\r\n');
    at += item.value.copy(buf, at);
    at = writeAscii(buf, at, '\r\n');
  }
  return buf.subarray(0, at);
}

/** Reads one status line per `ms`: HD stored, NS not stored because it exists, or an error. */
export class MetaAddReplies extends Reply<AddOutcome> {
  private seen = 0;
  private readonly outcome: AddOutcome = newAddOutcome();

  constructor(
    private readonly items: readonly WritableItem[],
    private readonly label: string,
  ) {
    super();
    if (items.length === 0) this.finish(this.outcome);
  }

  read(buf: Buffer, pos: number): number {
    while (this.seen < this.items.length) {
      const end = lineEnd(buf, pos);
      if (end < 0) return pos;
      const c0 = buf[pos];
      const c1 = buf[pos + 1];
      if (c0 === 0x48 && c1 === 0x44) this.outcome.stored++;
      else if (c0 === 0x4e && c1 === 0x53) this.outcome.existed++;
      else if (c0 === 0x53 && c1 === 0x45) {
        // SERVER_ERROR (object too large, out of memory): memcached swallowed the value,
        // so the pipeline stays in step and only this item is lost.
        const message = lineText(buf, pos, end);
        this.outcome.refused.push({ item: this.items[this.seen] as WritableItem, reason: refusalReason(message), message });
      } else {
        // CLIENT_ERROR or ERROR means the stream is out of step: nothing after it can be trusted.
        throw protocolError(this.label, 'unexpected reply to ms', lineText(buf, pos, end));
      }
      this.seen++;
      pos = end;
    }
    this.finish(this.outcome);
    return pos;
  }
}
