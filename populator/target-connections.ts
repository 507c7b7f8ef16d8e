import { backoffMs } from '../shared/backoff.js';
import type { Clock } from '../shared/clock.js';
import { isRetryable } from '../shared/errors.js';
import type { Connect } from '../shared/memcached/connect.js';
import type { MemcachedConnection } from '../shared/memcached/connection.js';
import { parseAddress } from '../shared/topology.js';
import { type RetryPolicy, stillFailing } from './retry-policy.js';

/** `all` in parts of `size` for eachWithRetries, each with where it starts in `all`. */
export function inBatches<T>(all: readonly T[], size: number): { start: number; part: readonly T[] }[] {
  const parts: { start: number; part: readonly T[] }[] = [];
  for (let start = 0; start < all.length; start += size) parts.push({ start, part: all.slice(start, start + size) });
  return parts;
}

/** Checks a new connection before it is used; throws to keep it from being used. */
export type CheckConnection = (address: string, conn: MemcachedConnection, signal?: AbortSignal) => Promise<void>;

/**
 * Connections to a replica's nodes (the target's; the source's, to check keys), opened on
 * first use and shared by every chunk in flight: their batches interleave on the same
 * pipelines, which keeps them full.
 */
export class TargetConnections {
  private readonly open = new Map<string, (Promise<MemcachedConnection> | undefined)[]>();
  private turn = 0;
  private closed = false;
  private readonly checking = new Set<MemcachedConnection>();

  constructor(
    private readonly connect: Connect,
    private readonly perNode: number,
    private readonly labelOf: (address: string) => string = (address) => address,
    private readonly check?: CheckConnection | undefined,
    private readonly role: 'target' | 'source' = 'target',
  ) {}

  /**
   * Sends `batches` with `send` on one of the node's connections, and those whose connection
   * failed again on a new one, with exponential backoff; fails, naming the node, when it
   * stays unreachable. `send` returns the batches that failed, each with its error.
   */
  async withRetries<T>(
    address: string,
    batches: readonly T[],
    retry: RetryPolicy,
    clock: Clock,
    signal: AbortSignal | undefined,
    send: (conn: MemcachedConnection, pending: readonly T[]) => Promise<{ batch: T; error: Error }[]>,
  ): Promise<void> {
    let pending = batches;
    let lastError: Error | undefined;
    for (let attempt = 1; attempt <= retry.attempts && pending.length > 0; attempt++) {
      if (attempt > 1) await clock.sleep(backoffMs(retry, attempt - 1), signal);
      let conn: MemcachedConnection;
      try {
        conn = await this.get(address, signal);
      } catch (error) {
        if (!isRetryable(error)) throw error;
        lastError = error as Error;
        continue;
      }
      const failed = await send(conn, pending);
      pending = failed.map((f) => f.batch);
      if (pending.length === 0) return;
      lastError = failed[0]?.error;
      if (signal?.aborted) break;
      // Out of step with the server: another attempt would only repeat it.
      if (!isRetryable(lastError)) throw lastError;
      await this.discard(address, conn);
    }
    if (signal?.aborted) throw signal.reason;
    throw stillFailing(address, retry, lastError?.message ?? 'unknown error', lastError, this.role);
  }

  /** withRetries for batches that are one request each: `send` sends one and takes its answer. */
  eachWithRetries<T>(
    address: string,
    batches: readonly T[],
    retry: RetryPolicy,
    clock: Clock,
    signal: AbortSignal | undefined,
    send: (conn: MemcachedConnection, batch: T) => Promise<void>,
  ): Promise<void> {
    return this.withRetries(address, batches, retry, clock, signal, async (conn, pending) => {
      const failed: { batch: T; error: Error }[] = [];
      await Promise.all(pending.map((batch) => send(conn, batch).catch((error: unknown) => void failed.push({ batch, error: error as Error }))));
      return failed;
    });
  }

  get(address: string, signal?: AbortSignal): Promise<MemcachedConnection> {
    if (this.closed) throw new Error('target connections are closed');
    let slots = this.open.get(address);
    if (!slots) {
      slots = [];
      this.open.set(address, slots);
    }
    const slot = this.turn++ % this.perNode;
    let conn = slots[slot];
    if (!conn) {
      conn = this.dial(address, signal);
      // A failed connect must not stay cached: the next attempt dials again.
      conn.catch(() => this.forget(address, conn as Promise<MemcachedConnection>));
      slots[slot] = conn;
    }
    return conn;
  }

  private async dial(address: string, signal: AbortSignal | undefined): Promise<MemcachedConnection> {
    const { host, port } = parseAddress(address);
    const conn = await this.connect({ host, port, label: this.labelOf(address) }, signal);
    // Held apart while checked: close() must not wait on a check a frozen node never answers.
    this.checking.add(conn);
    try {
      if (this.closed) throw new Error('target connections are closed');
      await this.check?.(address, conn, signal);
    } catch (error) {
      conn.close();
      throw error;
    } finally {
      this.checking.delete(conn);
    }
    return conn;
  }

  /** Drops a broken connection so the next `get` opens a fresh one. */
  async discard(address: string, conn: MemcachedConnection): Promise<void> {
    const slots = this.open.get(address) ?? [];
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i];
      if (slot && (await slot.catch(() => undefined)) === conn) slots[i] = undefined;
    }
    conn.close();
  }

  private forget(address: string, conn: Promise<MemcachedConnection>): void {
    const slots = this.open.get(address) ?? [];
    const i = slots.indexOf(conn);
    if (i >= 0) slots[i] = undefined;
  }

  /** Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    for (const conn of this.checking) conn.close();
    const all = [...this.open.values()].flat().filter((c): c is Promise<MemcachedConnection> => c !== undefined);
    this.open.clear();
    for (const conn of await Promise.allSettled(all)) if (conn.status === 'fulfilled') conn.value.close();
  }
}
