import type { ChunkMessage } from '../chunk-message.js';
import type { ChunkQueue, Delivery, ParkedMessage } from '../chunk-queue.js';
import { StateChange } from '../state-change.js';

export interface MemoryQueueOptions {
  /** Messages waiting to be received before `send` blocks. */
  readonly capacity: number;
  /** Deliveries of one message before it is parked instead of retried. */
  readonly maxReceives?: number;
  /** A message was parked: by its holder, or after its last delivery failed. */
  readonly onPark?: ((parked: ParkedMessage) => void) | undefined;
}

interface Entry {
  readonly message: ChunkMessage;
  receiveCount: number;
}

/**
 * The embedded default's queue: bounded, in process, at-least-once between its own
 * producers and consumers. (A crash of the process loses the queue, not the job: the job's
 * manifest knows which chunks were produced and which were consumed.)
 */
export class MemoryQueue implements ChunkQueue {
  private readonly ready: Entry[] = [];
  private inFlight = 0;
  private closed = false;
  private readonly changed = new StateChange();
  readonly parked: ParkedMessage[] = [];
  readonly capacity: number;
  readonly maxReceives: number;
  private readonly onPark: MemoryQueueOptions['onPark'];

  constructor(options: MemoryQueueOptions) {
    this.onPark = options.onPark;
    this.capacity = Math.max(1, options.capacity);
    this.maxReceives = Math.max(1, options.maxReceives ?? 3);
  }

  get depth(): number {
    return this.ready.length;
  }

  async send(message: ChunkMessage, signal?: AbortSignal): Promise<void> {
    if (this.closed) throw new Error('send on a closed queue');
    await this.changed.until(() => this.ready.length < this.capacity, signal);
    this.ready.push({ message, receiveCount: 0 });
    this.changed.notify();
  }

  /** No more messages will be sent: receivers finish once the rest is handled. */
  close(): void {
    this.closed = true;
    this.changed.notify();
  }

  async receive(signal?: AbortSignal): Promise<Delivery | undefined> {
    // While a message is in flight it may come back for a retry, so a closed queue is only
    // finished when nothing is waiting and nothing is held.
    await this.changed.until(() => this.ready.length > 0 || (this.closed && this.inFlight === 0), signal);
    const entry = this.ready.shift();
    if (!entry) return undefined;
    entry.receiveCount++;
    this.inFlight++;
    this.changed.notify();
    let settled = false;
    const settle = (then: () => void): Promise<void> => {
      if (settled) throw new Error('a delivery was settled twice');
      settled = true;
      this.inFlight--;
      then();
      this.changed.notify();
      return Promise.resolve();
    };
    return {
      message: entry.message,
      receiveCount: entry.receiveCount,
      ack: () => settle(() => undefined),
      retry: (reason) =>
        settle(() => {
          if (entry.receiveCount >= this.maxReceives) this.park(entry.message, reason);
          else this.ready.push(entry);
        }),
      park: (reason) => settle(() => this.park(entry.message, reason)),
    };
  }

  private park(message: ChunkMessage, reason: string): void {
    const parked = { message, reason };
    this.parked.push(parked);
    this.onPark?.(parked);
  }
}
