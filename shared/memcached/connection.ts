import net from 'node:net';
import { CachewarmError, abortReason } from '../errors.js';

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  /** How the node is named in errors and logs, e.g. `zone-a/10.0.0.1:11211`. */
  readonly label?: string | undefined;
}

export interface ConnectOptions {
  readonly connectTimeoutMs?: number;
  /** A request that has seen no byte of its reply for this long fails the connection. */
  readonly replyTimeoutMs?: number;
  readonly signal?: AbortSignal | undefined;
}

/**
 * Parses one reply (or one pipelined batch of replies) straight out of the socket's bytes.
 * `read` consumes what it can from `buf` at `pos` and returns where it stopped; a reply that
 * needs more bytes returns early and is called again when they arrive. Readers work on
 * Buffers, not strings, because a warm moves millions of replies through here.
 */
export abstract class Reply<T> {
  done = false;
  /** Bytes, counted from `pos`, that must be buffered before `read` can progress; 0 when unknown. */
  wantBytes = 0;
  readonly promise: Promise<T>;
  private settle!: { resolve: (value: T) => void; reject: (error: Error) => void };

  constructor() {
    this.promise = new Promise<T>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // A batch failed by a dead connection may have no awaiter yet; its caller sees the
    // error when it awaits, so an unhandled-rejection crash here would be wrong.
    this.promise.catch(() => undefined);
  }

  abstract read(buf: Buffer, pos: number): number;

  protected finish(value: T): void {
    this.done = true;
    this.settle.resolve(value);
  }

  fail(error: Error): void {
    this.done = true;
    this.settle.reject(error);
  }
}

const LF = 0x0a;
const INITIAL_READ_BUFFER = 256 << 10;
const MIN_READ = 64 << 10;

/** Index just past the next `\n` at or after `pos`, or -1 when the line is incomplete. */
export function lineEnd(buf: Buffer, pos: number): number {
  const lf = buf.indexOf(LF, pos);
  return lf < 0 ? -1 : lf + 1;
}

/** The line at `pos` without its `\r\n` or `\n`, as text (for status lines and errors only). */
export function lineText(buf: Buffer, pos: number, end: number): string {
  let stop = end - 1;
  if (stop > pos && buf[stop - 1] === 0x0d) stop -= 1;
  return buf.toString('latin1', pos, stop);
}

/**
 * One TCP connection to one memcached node, speaking the text and meta protocol with any
 * number of requests pipelined: replies are matched to requests by order, which is all
 * memcached guarantees and all a pipeline needs.
 */
export class MemcachedConnection {
  /**
   * Received bytes not yet consumed are acc[start, end). The socket reads straight into the
   * free space after `end` (`onread`), so a warm's gigabytes of replies cost no allocation
   * and no copy per read; only a partial reply is moved to the front when space runs out.
   */
  private acc: Buffer = Buffer.allocUnsafe(INITIAL_READ_BUFFER);
  private start = 0;
  private end = 0;
  private readonly replies: Reply<unknown>[] = [];
  private failure: Error | undefined;
  private paused = false;
  private drain: Promise<void> | undefined;
  readonly label: string;

  private constructor(
    private readonly socket: net.Socket,
    readonly endpoint: Endpoint,
    replyTimeoutMs: number,
  ) {
    this.label = endpoint.label ?? `${endpoint.host}:${endpoint.port}`;
    socket.setNoDelay(true);
    socket.on('error', (error) => this.destroy(this.lost(error)));
    socket.on('close', () => this.destroy(this.lost()));
    socket.setTimeout(replyTimeoutMs, () => {
      if (this.replies.length > 0 && !this.paused) {
        this.destroy(
          new CachewarmError('NODE_UNREACHABLE', `${this.label}: no reply within ${replyTimeoutMs} ms`, {
            node: this.label,
          }),
        );
      }
    });
  }

  static connect(endpoint: Endpoint, options: ConnectOptions = {}): Promise<MemcachedConnection> {
    const { connectTimeoutMs = 5_000, replyTimeoutMs = 30_000, signal } = options;
    const label = endpoint.label ?? `${endpoint.host}:${endpoint.port}`;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(abortReason(signal));
        return;
      }
      let connection: MemcachedConnection | undefined;
      const socket = net.connect({
        host: endpoint.host,
        port: endpoint.port,
        onread: {
          buffer: () => connection?.readBuffer() ?? Buffer.allocUnsafe(MIN_READ),
          callback: (bytes, buf) => {
            connection?.received(bytes, buf);
            return true;
          },
        },
      });
      const fail = (error: Error): void => {
        cleanup();
        socket.destroy();
        reject(error);
      };
      const onError = (error: Error): void =>
        fail(
          new CachewarmError('NODE_UNREACHABLE', `cannot connect to ${label}: ${error.message}`, { node: label }, {
            cause: error,
          }),
        );
      const onAbort = (): void => fail(abortReason(signal as AbortSignal));
      const timer = setTimeout(
        () => fail(new CachewarmError('NODE_UNREACHABLE', `cannot connect to ${label}: no answer within ${connectTimeoutMs} ms`, { node: label })),
        connectTimeoutMs,
      );
      const cleanup = (): void => {
        clearTimeout(timer);
        socket.off('error', onError);
        signal?.removeEventListener('abort', onAbort);
      };
      socket.once('error', onError);
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('connect', () => {
        cleanup();
        connection = new MemcachedConnection(socket, endpoint, replyTimeoutMs);
        resolve(connection);
      });
    });
  }

  get closed(): boolean {
    return this.failure !== undefined;
  }

  /** Sends a request and queues the reader of its reply. Resolves once the socket can take more. */
  async send<T>(request: Buffer, reply: Reply<T>): Promise<T> {
    await this.enqueue(request, reply);
    return reply.promise;
  }

  /** Sends without waiting for the reply, but waits while the kernel's send buffer is full. */
  async enqueue<T>(request: Buffer, reply: Reply<T>): Promise<void> {
    if (this.failure) {
      reply.fail(this.failure);
      return;
    }
    this.replies.push(reply as Reply<unknown>);
    if (!this.socket.write(request)) await this.drained();
  }

  /** Stops reading from the socket, so that TCP pushes back on the server (used by the crawl). */
  pause(): void {
    // Once is enough: a crawl asks again for every line parsed past a full batch.
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  resume(): void {
    this.paused = false;
    this.socket.resume();
  }

  /** Closes the connection; pending replies fail. Safe to call more than once. */
  close(): void {
    this.destroy(new CachewarmError('ABORTED', `${this.label}: connection closed`, { node: this.label }));
  }

  destroy(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    this.socket.destroy();
    for (const reply of this.replies.splice(0)) reply.fail(error);
  }

  /** One shared wait for 'drain', however many senders are waiting on it. */
  private drained(): Promise<void> {
    this.drain ??= new Promise<void>((resolve) => {
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        this.drain = undefined;
        resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
    return this.drain;
  }

  private lost(error?: Error): Error {
    const why = error ? `: ${error.message}` : '';
    return new CachewarmError('NODE_UNREACHABLE', `connection to ${this.label} lost${why}`, { node: this.label }, {
      cause: error,
    });
  }

  /** Where the socket writes next: the free space after the unread bytes, made large enough. */
  private readBuffer(): Buffer {
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
    }
    const want = Math.max(this.replies[0]?.wantBytes ?? 0, 0) + MIN_READ;
    if (this.acc.length - this.end < MIN_READ) {
      const unread = this.end - this.start;
      const target = unread + want > this.acc.length ? Buffer.allocUnsafe(Math.max(this.acc.length * 2, unread + want)) : this.acc;
      this.acc.copy(target, 0, this.start, this.end);
      this.acc = target;
      this.start = 0;
      this.end = unread;
    }
    return this.acc.subarray(this.end);
  }

  private received(bytes: number, buf: Uint8Array): void {
    // The first read after connecting lands in a buffer handed out before this object existed.
    if (buf.buffer !== this.acc.buffer || buf.byteOffset !== this.acc.byteOffset + this.end) {
      const into = this.readBuffer();
      if (into.length < bytes) throw new Error('read buffer smaller than a read');
      into.set(buf.subarray(0, bytes));
    }
    this.end += bytes;
    const head = this.replies[0];
    // A large value arrives over many reads: parse once it is all there.
    if (head && head.wantBytes > 0 && this.end - this.start < head.wantBytes) return;
    this.process();
  }

  private process(): void {
    const view = this.acc.subarray(0, this.end);
    try {
      while (this.replies.length > 0) {
        const head = this.replies[0] as Reply<unknown>;
        head.wantBytes = 0;
        this.start = head.read(view, this.start);
        if (!head.done) break;
        this.replies.shift();
      }
    } catch (error) {
      this.destroy(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    if (this.replies.length === 0 && this.start < this.end) {
      const text = lineText(view, this.start, Math.min(this.end, this.start + 120));
      this.destroy(
        new CachewarmError('NODE_PROTOCOL', `${this.label}: unexpected bytes with no request pending: ${JSON.stringify(text)}`, {
          node: this.label,
        }),
      );
    }
  }
}

/** A protocol error for a reply line memcached should not have sent. */
export function protocolError(label: string, what: string, line: string): CachewarmError {
  return new CachewarmError('NODE_PROTOCOL', `${label}: ${what}: ${JSON.stringify(line)}`, { node: label, line });
}
