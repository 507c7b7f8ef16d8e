import type { ChunkMessage, TargetRing } from '../chunk-message.js';
import type { ChunkQueue, Delivery } from '../chunk-queue.js';

export interface FanOutDestination {
  readonly queue: ChunkQueue;
  /** The ring this queue's messages name; absent: the message's own. */
  readonly target?: TargetRing | undefined;
  /** The job this destination's messages are for (several targets on one standing queue); absent: none named. */
  readonly targetJobId?: string | undefined;
}

/**
 * Announces every message on several queues, each with its own target ring: one dump
 * filling several replicas, each replica's populators reading a queue of their own. A send
 * fails if any queue refuses it; the dump then sends it again (at least once, on every
 * queue: a message a queue got twice is written add-only twice, harmlessly).
 */
export class FanOutQueue implements ChunkQueue {
  constructor(private readonly destinations: readonly FanOutDestination[]) {}

  async send(message: ChunkMessage, signal?: AbortSignal): Promise<void> {
    await Promise.all(
      this.destinations.map((d) =>
        d.queue.send({ ...message, ...(d.target && { target: d.target }), ...(d.targetJobId !== undefined && { targetJobId: d.targetJobId }) }, signal),
      ),
    );
  }

  receive(): Promise<Delivery | undefined> {
    return Promise.reject(new Error('a fan-out queue only sends: its destinations are read each on its own'));
  }
}
