import memjs, { type Client, type Response, type Server } from 'memjs';
import type { Clock } from '../shared/clock.js';
import { CachewarmError, isRetryable } from '../shared/errors.js';
import { type AddOutcome, type WritableItem, type WrittenItem, newAddOutcome } from '../shared/memcached/meta-add.js';
import { type DeleteOutcome, newDeleteOutcome } from '../shared/memcached/meta-reconcile.js';
import { parseAddress } from '../shared/topology.js';
import { backoffMs } from '../shared/backoff.js';
import { DEFAULT_RETRY, type RetryPolicy, stillFailing } from './retry-policy.js';
import type { NodeWriter } from './node-writer.js';

export interface MemjsNodeWriterOptions {
  readonly clock: Clock;
  /** SASL PLAIN credentials, for targets started with `-S`. Without them memjs sends none. */
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  readonly retry?: RetryPolicy;
  /** How a node is named in errors, e.g. its id `replica/address`. */
  readonly labelOf?: (address: string) => string;
  /** Seconds an add may wait for its reply; connecting and authenticating get twice that. */
  readonly timeoutSeconds?: number;
  /** Adds unanswered at once, per `addItems` call. */
  readonly maxInFlight?: number;
  /** Value bytes unanswered at once, per `addItems` call (at least one add is always let through). */
  readonly maxInFlightBytes?: number;
}

const EMPTY = Buffer.alloc(0);
/** Binary protocol opcode GET: the value, and in the header the item's CAS. */
const OPCODE_GET = 0x00;
/** Binary protocol opcode ADD: stores only when the key is absent. */
const OPCODE_ADD = 0x02;
/** Binary protocol opcode DELETE: with a CAS in the header, only an item still holding it is deleted. */
const OPCODE_DELETE = 0x04;
const STATUS_OK = 0x0000;
const STATUS_KEY_NOT_FOUND = 0x0001;
/** For an ADD: the key is there; for a DELETE with a CAS: the item changed since. */
const STATUS_KEY_EXISTS = 0x0002;
// The binary protocol's E2BIG and ENOMEM.
const STATUS_TOO_LARGE = 0x0003;
const STATUS_OUT_OF_MEMORY = 0x0082;
/** How often outcomes are handed to `onOutcome`, in answered items. */
const REPORT_EVERY = 256;
/** memjs reports a refused SASL login (or a command refused for want of one) with this text. */
const AUTH_FAILED = /authentication failed/i;


/** One binary request without extras or value (`edit` fills in the header, e.g. a CAS), and its response. */
function perform(client: Client, opcode: number, key: Buffer, edit?: (request: Buffer) => void): Promise<Response> {
  client.incrSeq();
  const request = memjs.Utils.makeRequestBuffer(opcode, key, EMPTY, EMPTY, client.seq);
  edit?.(request);
  return new Promise<Response>((resolve, reject) =>
    // perform's key only picks the server among several; this client has one.
    client.perform(key as unknown as string, request, client.seq, (err: unknown, response?: Response | null) =>
      err || !response ? reject(err instanceof Error ? err : new Error(String(err ?? 'no response'))) : resolve(response),
    ),
  );
}

/** Extras of a binary ADD, laid out as memjs's own `add` builds them: flags, then expiry, u32 big-endian. */
function addExtras(item: WritableItem): Buffer {
  const extras = Buffer.allocUnsafe(8);
  extras.writeUInt32BE(item.flags >>> 0, 0);
  // Like the meta writer: 0 (or anything not positive) is "no expiry"; larger values are
  // absolute unix times, which memcached takes as such (anything above 30 days).
  extras.writeUInt32BE(item.exptime > 0 ? item.exptime : 0, 4);
  return extras;
}

interface SendResult {
  /** Items never answered: their fate on the server is unknown, so they are sent again. */
  readonly unanswered: WritableItem[];
  readonly error?: Error;
}

/**
 * Adds items to one target node through memjs (binary protocol, optional SASL PLAIN): the
 * writer for targets that require authentication, where the text protocol is disabled.
 *
 * memjs's public `add` always sends flags 0, so each ADD is built with memjs's own
 * `Utils.makeRequestBuffer` and sent with `Client#perform`, which is exactly what `add` does
 * internally, but with the item's 32-bit flags and absolute expiry in the extras. Keys go
 * in as Buffers, copied byte for byte (no string conversion anywhere).
 *
 * Adds are pipelined on the node's one connection, a bounded number unanswered at once.
 * When the connection fails, the adds not yet answered are sent again on a new client with
 * exponential backoff (safe: `add` never overwrites, an item the failed attempt did store
 * is simply found present). A node that stays down fails with an error naming it; a node
 * that refuses the credentials fails at once.
 */
export class MemjsNodeWriter implements NodeWriter {
  private readonly clients = new Map<string, Client>();
  private readonly clock: Clock;
  private readonly retry: RetryPolicy;
  private readonly labelOf: (address: string) => string;
  private readonly timeoutSeconds: number;
  private readonly maxInFlight: number;
  private readonly maxInFlightBytes: number;
  private closed = false;

  constructor(private readonly options: MemjsNodeWriterOptions) {
    this.clock = options.clock;
    this.retry = options.retry ?? DEFAULT_RETRY;
    this.labelOf = options.labelOf ?? ((address) => address);
    this.timeoutSeconds = options.timeoutSeconds ?? 5;
    this.maxInFlight = Math.max(1, options.maxInFlight ?? 256);
    this.maxInFlightBytes = Math.max(1, options.maxInFlightBytes ?? 2 << 20);
  }

  /** Idempotent. */
  close(): Promise<void> {
    this.closed = true;
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
    return Promise.resolve();
  }

  async addItems(
    address: string,
    items: readonly WritableItem[],
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
    signal?: AbortSignal,
    withCas = false,
  ): Promise<void> {
    let pending: readonly WritableItem[] = items;
    let lastError: Error | undefined;
    for (let attempt = 1; attempt <= this.retry.attempts && pending.length > 0; attempt++) {
      if (attempt > 1) await this.clock.sleep(backoffMs(this.retry, attempt - 1), signal);
      if (signal?.aborted) break;
      const client = this.clientFor(address);
      const result = await this.send(client, pending, onOutcome, signal, withCas, attempt > 1);
      pending = result.unanswered;
      if (pending.length === 0) return;
      lastError = result.error;
      // A failed connection leaves memjs's parser state behind (a half-read reply): start over.
      this.discard(address, client);
      if (signal?.aborted) break;
      if (lastError && AUTH_FAILED.test(lastError.message)) {
        // Another attempt would be refused the same way.
        const as = this.options.username === undefined ? 'without credentials (the node requires SASL)' : `as user "${this.options.username}"`;
        throw new CachewarmError(
          'NODE_UNREACHABLE',
          `target node ${address} refused SASL authentication ${as}: ${this.describe(address, lastError)}`,
          { node: address },
          { cause: lastError },
        );
      }
    }
    if (signal?.aborted) throw signal.reason;
    throw stillFailing(address, this.retry, this.describe(address, lastError), lastError);
  }

  /**
   * A binary DELETE per item, its CAS in the header, one at a time: the reconcile sends only
   * the few keys a source deleted.
   */
  async deleteUnchanged(address: string, items: readonly WrittenItem[], signal?: AbortSignal): Promise<DeleteOutcome> {
    const outcome = newDeleteOutcome();
    await this.oneByOne(address, items, signal, async (client, { key, cas }) => {
      const { status } = (await perform(client, OPCODE_DELETE, key, (request) => request.writeBigUInt64BE(BigInt(cas), 16))).header;
      if (status === STATUS_OK) outcome.removed++;
      else if (status === STATUS_KEY_EXISTS) outcome.kept++;
      else if (status === STATUS_KEY_NOT_FOUND) outcome.alreadyGone++;
      else throw this.unexpected(address, 'a conditional delete', status);
    });
    return outcome;
  }

  /**
   * A binary GET per key, one at a time, the value coming too: asked only for what adds that
   * may have run before (a resent batch, a redelivered chunk) found present.
   */
  async casOf(address: string, keys: readonly Buffer[], signal?: AbortSignal): Promise<(number | undefined)[]> {
    const cas: (number | undefined)[] = [];
    await this.oneByOne(address, keys, signal, async (client, key, i) => {
      const { header } = await perform(client, OPCODE_GET, key);
      if (header.status === STATUS_OK) cas[i] = Number(header.cas.readBigUInt64BE(0));
      else if (header.status !== STATUS_KEY_NOT_FOUND) throw this.unexpected(address, 'a get', header.status);
    });
    return cas;
  }

  /**
   * `each` for every item in turn, on the node's client. A connection that fails is replaced
   * and the items not yet answered are sent again (a delete the failed attempt carried out
   * is then found gone); a node that stays down fails naming it.
   */
  private async oneByOne<T>(address: string, items: readonly T[], signal: AbortSignal | undefined, each: (client: Client, item: T, index: number) => Promise<void>): Promise<void> {
    let next = 0;
    let lastError: Error | undefined;
    for (let attempt = 1; attempt <= this.retry.attempts && next < items.length; attempt++) {
      if (attempt > 1) await this.clock.sleep(backoffMs(this.retry, attempt - 1), signal);
      if (signal?.aborted) break;
      const client = this.clientFor(address);
      try {
        for (; next < items.length; next++) await each(client, items[next] as T, next);
      } catch (error) {
        if (!isRetryable(error)) throw error;
        lastError = error as Error;
        this.discard(address, client);
      }
    }
    if (next < items.length) {
      if (signal?.aborted) throw signal.reason;
      throw stillFailing(address, this.retry, this.describe(address, lastError), lastError);
    }
  }

  private unexpected(address: string, what: string, status: number): CachewarmError {
    return new CachewarmError('NODE_PROTOCOL', `target node ${this.labelOf(address)} answered ${what} with status 0x${status.toString(16)}`, { node: address });
  }

  async probe(address: string): Promise<number> {
    return Number((await this.stats(address)).get('curr_items') ?? 0);
  }

  /** `stats` over the binary protocol: answers only once the SASL login went through. */
  async stats(address: string): Promise<Map<string, string>> {
    const client = this.clientFor(address);
    try {
      return await new Promise<Map<string, string>>((resolve, reject) => {
        client.stats((error, _server, stats) => (error ? reject(error) : resolve(new Map(Object.entries(stats ?? {}).map(([k, v]) => [k, String(v)])))));
      });
    } catch (error) {
      this.discard(address, client);
      const why = this.describe(address, error as Error);
      const what = AUTH_FAILED.test((error as Error).message) ? 'refused SASL authentication' : 'does not answer';
      throw new CachewarmError('NODE_UNREACHABLE', `target node ${address} ${what}: ${why}`, { node: address }, { cause: error });
    }
  }

  private describe(address: string, error: Error | undefined): string {
    const why = error?.message ?? 'unknown error';
    const label = this.labelOf(address);
    return label === address ? why : `${label}: ${why}`;
  }

  /** One memjs client per node, opened on first use. */
  private clientFor(address: string): Client {
    if (this.closed) throw new Error('memjs node writer is closed');
    let client = this.clients.get(address);
    if (!client) {
      // Built the way Client.create builds it, minus its "[user:pass@]host:port" parsing,
      // which cannot read an [IPv6]:port address.
      const { host, port } = parseAddress(address);
      const serverOptions = { timeout: this.timeoutSeconds, conntimeout: 2 * this.timeoutSeconds };
      const server = new memjs.Server(host, port, this.options.username, this.options.password, serverOptions);
      // Retries are ours (with backoff, across a fresh connection); memjs only logs to the console.
      client = new memjs.Client([server], { retries: 0, failover: false, logger: { log: () => undefined } });
      this.clients.set(address, client);
    }
    return client;
  }

  private discard(address: string, client: Client): void {
    if (this.clients.get(address) === client) this.clients.delete(address);
    client.close();
  }

  /**
   * Sends every item as a binary ADD on one client, at most maxInFlight (and about
   * maxInFlightBytes) unanswered at a time. Stops sending at the first connection error and
   * returns the items it has no answer for.
   */
  private send(
    client: Client,
    items: readonly WritableItem[],
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
    signal: AbortSignal | undefined,
    withCas: boolean,
    resent: boolean,
  ): Promise<SendResult> {
    const server = client.servers[0] as Server;
    const timeoutMs = this.timeoutSeconds * 1000;
    return new Promise<SendResult>((resolve) => {
      const unanswered: WritableItem[] = [];
      let error: Error | undefined;
      let next = 0;
      let inFlight = 0;
      let inFlightBytes = 0;
      let done = false;
      const fresh = (): AddOutcome => ({ ...newAddOutcome(), ...(withCas && { written: [], existedKeys: [] }), ...(resent && { resent }) });
      let outcome = fresh();
      let answered = 0;
      let answeredBytes = 0;
      let lastProgress = Date.now();

      // memjs notices a dead connection only when a write fails or a reply times out on an
      // idle socket; a connection the server closed while every add was already written
      // would leave them waiting forever. Fail them instead, through memjs's own error path.
      const watchdog = setInterval(
        () => {
          if (inFlight > 0 && Date.now() - lastProgress > timeoutMs) {
            server.error(new Error(`no reply within ${this.timeoutSeconds}s (connection lost?)`));
          }
        },
        Math.max(50, timeoutMs / 4),
      );

      const report = (): void => {
        if (answered === 0) return;
        const batch = outcome;
        const bytes = answeredBytes;
        outcome = fresh();
        answered = 0;
        answeredBytes = 0;
        onOutcome(batch, bytes);
      };

      const finishIfIdle = (): void => {
        if (done || inFlight > 0) return;
        const stopped = error !== undefined || signal?.aborted === true;
        if (!stopped && next < items.length) return;
        done = true;
        clearInterval(watchdog);
        for (; next < items.length; next++) unanswered.push(items[next] as WritableItem);
        report();
        resolve(error ? { unanswered, error } : { unanswered });
      };

      const settle = (item: WritableItem, err: unknown, response: Response | null): void => {
        inFlight--;
        inFlightBytes -= item.value.length;
        lastProgress = Date.now();
        if (err || !response) {
          // memjs hands some failures over as bare strings (a refused login among them).
          error ??= err instanceof Error ? err : new Error(String(err ?? 'no response'));
          unanswered.push(item);
        } else {
          const status = response.header.status;
          if (status === STATUS_OK) {
            outcome.stored++;
            if (response.header.cas) outcome.written?.push({ key: item.key, cas: Number(response.header.cas.readBigUInt64BE(0)) });
          } else if (status === STATUS_KEY_EXISTS) {
            outcome.existed++;
            outcome.existedKeys?.push(item.key);
          } else {
            // Too large, out of memory, invalid key: memcached answered, the pipeline is in
            // step, only this item is lost.
            const text = response.val.toString('latin1').trim();
            outcome.refused.push({
              item,
              reason: status === STATUS_TOO_LARGE ? 'tooLarge' : status === STATUS_OUT_OF_MEMORY ? 'outOfMemory' : 'serverError',
              message: `status 0x${status.toString(16).padStart(4, '0')}${text ? ` ${text}` : ''}`,
            });
          }
          answered++;
          answeredBytes += item.value.length;
          if (answered >= REPORT_EVERY) report();
        }
        pump();
      };

      const pump = (): void => {
        while (
          !done &&
          error === undefined &&
          signal?.aborted !== true &&
          next < items.length &&
          inFlight < this.maxInFlight &&
          (inFlight === 0 || inFlightBytes < this.maxInFlightBytes)
        ) {
          const item = items[next++] as WritableItem;
          inFlight++;
          inFlightBytes += item.value.length;
          client.incrSeq();
          const seq = client.seq;
          const request = memjs.Utils.makeRequestBuffer(OPCODE_ADD, item.key, addExtras(item), item.value, seq);
          // perform's key only picks the server among several; this client has one, so the
          // key is never hashed (and never turned into a string).
          client.perform(item.key as unknown as string, request, seq, (err: unknown, response?: Response | null) =>
            settle(item, err, response ?? null),
          );
        }
        finishIfIdle();
      };

      pump();
    });
  }
}
