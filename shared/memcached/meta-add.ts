import { Reply, lineEnd, lineText, protocolError } from './connection.js';
import type { BufferPool } from '../buffer-pool.js';
import { writeAscii, writeDecimal, writeKey } from './ascii.js';
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

/** An item the warm's add stored, with the CAS the target gave it: what a conditional delete names. */
export interface WrittenItem {
  /** The key's bytes (a view into the batch's items: valid while they are). */
  readonly key: Buffer;
  /** memcached's CAS of the stored item; a number, so one above 2^53 could only fail a compare, never match another. */
  readonly cas: number;
}

export interface AddOutcome {
  stored: number;
  /** The stored items with their CAS, when the adds asked for it (`withCas`); else absent. */
  written?: WrittenItem[];
  /** The target already held the key: left as it was, by design. */
  existed: number;
  /**
   * The keys found present, when the adds asked for CAS (`withCas`; views, like `written`'s).
   * Where the same adds may have been sent before (`resent`, or a chunk delivered again),
   * some may be the warm's own: the delete reconcile looks their CAS up and checks them too.
   */
  existedKeys?: Buffer[];
  /** The batch was sent again after its connection failed: what it found present may be what the failed attempt stored. */
  resent?: boolean;
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
 * Items stored back to back in one buffer (a data chunk's records), read in place: item i's
 * key is bytes[keyStart(i), keyStart(i) + keyBytes(i)), its value likewise.
 */
export interface PackedItems {
  readonly bytes: Buffer;
  readonly length: number;
  keyStart(i: number): number;
  keyBytes(i: number): number;
  valueStart(i: number): number;
  valueBytes(i: number): number;
  flags(i: number): number;
  exptime(i: number): number;
  /** Item i as an object with views of `bytes`, for what is reported of it (a refusal). */
  item(i: number): WritableItem;
}

/** Some of a PackedItems' items, by index: e.g. what one node gets of a chunk. */
export interface PackedSelection {
  readonly packed: PackedItems;
  readonly indices: readonly number[];
}

/** What one pipelined batch of adds carries: items, or items packed in a chunk. */
export type AddBatch = readonly WritableItem[] | PackedSelection;

export const batchLength = (batch: AddBatch): number => (isPackedSelection(batch) ? batch.indices.length : batch.length);

function isPackedSelection(batch: AddBatch): batch is PackedSelection {
  return !Array.isArray(batch);
}

/** The key of item `i` of a batch, as a view. */
function keyOf(batch: AddBatch, i: number): Buffer {
  if (!isPackedSelection(batch)) return (batch[i] as WritableItem).key;
  const index = batch.indices[i] as number;
  const at = batch.packed.keyStart(index);
  return batch.packed.bytes.subarray(at, at + batch.packed.keyBytes(index));
}

/** Item `i` of a batch as an object (for a refusal). */
function itemOf(batch: AddBatch, i: number): WritableItem {
  return isPackedSelection(batch) ? batch.packed.item(batch.indices[i] as number) : (batch[i] as WritableItem);
}

/** Writes one `ms` command for the key src[keyAt, keyEnd) and the value valueSrc[valueAt, valueEnd). */
function writeAdd(
  buf: Buffer,
  at: number,
  src: Buffer,
  keyAt: number,
  keyEnd: number,
  valueSrc: Buffer,
  valueAt: number,
  valueEnd: number,
  flags: number,
  exptime: number,
  withCas: boolean,
): number {
  const raw = isRawSafeKey(src, keyAt, keyEnd);
  at = writeAscii(buf, at, 'ms ');
  at = writeKey(buf, at, src, raw, keyAt, keyEnd);
  buf[at++] = 0x20;
  at = writeDecimal(buf, at, valueEnd - valueAt);
  at = writeAscii(buf, at, withCas ? ' ME c F' : ' ME F');
  at = writeDecimal(buf, at, flags >>> 0);
  if (exptime > 0) {
    at = writeAscii(buf, at, ' T');
    at = writeDecimal(buf, at, exptime);
  }
  if (!raw) at = writeAscii(buf, at, ' b');
  at = writeAscii(buf, at, '\r\n');
  at += valueSrc.copy(buf, at, valueAt, valueEnd);
  return writeAscii(buf, at, '\r\n');
}

/**
 * Builds pipelined `ms <key> <len> ME F<flags> T<exptime>` commands: mode E is add, so an
 * item the target already holds (written by live traffic during the warm) is never replaced.
 * The expiry is written as an absolute unix time, which memcached takes as such for any
 * value above 30 days: it stays exact however long the item waited in a chunk.
 * `withCas` adds `c`: a stored item's reply carries its CAS (see WrittenItem).
 * One buffer for the whole batch, written in place: this runs for every item of a warm.
 */
export function buildMetaAdds(batch: AddBatch, pool?: BufferPool, withCas = false): Buffer {
  let bound = 0;
  if (isPackedSelection(batch)) {
    const { packed, indices } = batch;
    for (const i of indices) bound += packed.keyBytes(i) * 2 + packed.valueBytes(i) + 66;
    const buf = pool ? pool.acquire(bound) : Buffer.allocUnsafe(bound);
    let at = 0;
    for (const i of indices) {
      const keyAt = packed.keyStart(i);
      const valueAt = packed.valueStart(i);
      at = writeAdd(buf, at, packed.bytes, keyAt, valueAt, packed.bytes, valueAt, valueAt + packed.valueBytes(i), packed.flags(i), packed.exptime(i), withCas);
    }
    return buf.subarray(0, at);
  }
  for (const item of batch) bound += item.key.length * 2 + item.value.length + 66;
  const buf = pool ? pool.acquire(bound) : Buffer.allocUnsafe(bound);
  let at = 0;
  for (const item of batch) {
    at = writeAdd(buf, at, item.key, 0, item.key.length, item.value, 0, item.value.length, item.flags, item.exptime, withCas);
  }
  return buf.subarray(0, at);
}

/** The CAS of a `HD c<cas>` reply line at `pos` (the only flag asked for, so right after the status); undefined without it. */
export function casOfReply(buf: Buffer, pos: number): number | undefined {
  if (buf[pos + 3] !== 0x63) return undefined;
  let cas = 0;
  for (let i = pos + 4, d = buf[i] as number; d >= 0x30 && d <= 0x39; d = buf[++i] as number) cas = cas * 10 + (d - 0x30);
  return cas;
}

/** Reads one status line per `ms`: HD stored, NS not stored because it exists, or an error. */
export class MetaAddReplies extends Reply<AddOutcome> {
  private seen = 0;
  private readonly count: number;
  private readonly outcome: AddOutcome = newAddOutcome();

  constructor(
    private readonly items: AddBatch,
    private readonly label: string,
    withCas = false,
  ) {
    super();
    this.count = batchLength(items);
    if (withCas) {
      this.outcome.written = [];
      this.outcome.existedKeys = [];
    }
    if (this.count === 0) this.finish(this.outcome);
  }

  read(buf: Buffer, pos: number): number {
    while (this.seen < this.count) {
      const end = lineEnd(buf, pos);
      if (end < 0) return pos;
      const c0 = buf[pos];
      const c1 = buf[pos + 1];
      if (c0 === 0x48 && c1 === 0x44) {
        this.outcome.stored++;
        // `HD c<cas>`: the only flag asked for, so the digits start right after it.
        if (this.outcome.written) {
          const cas = casOfReply(buf, pos);
          if (cas === undefined) throw protocolError(this.label, 'ms reply without the CAS asked for', lineText(buf, pos, end));
          this.outcome.written.push({ key: keyOf(this.items, this.seen), cas });
        }
      }
      else if (c0 === 0x4e && c1 === 0x53) {
        this.outcome.existed++;
        this.outcome.existedKeys?.push(keyOf(this.items, this.seen));
      }
      else if (c0 === 0x53 && c1 === 0x45) {
        // SERVER_ERROR (object too large, out of memory): memcached swallowed the value,
        // so the pipeline stays in step and only this item is lost.
        const message = lineText(buf, pos, end);
        this.outcome.refused.push({ item: itemOf(this.items, this.seen), reason: refusalReason(message), message });
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
