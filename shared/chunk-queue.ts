import type { ChunkMessage } from './chunk-message.js';

/** A message handed to one populator. Exactly one of ack, retry or park must be called. */
export interface Delivery {
  readonly message: ChunkMessage;
  /** 1 on first delivery; more when an earlier holder failed or crashed. */
  readonly receiveCount: number;
  /** Every item was handled: the message is gone for good. */
  ack(): Promise<void>;
  /** Handling failed for a reason that may pass (a node down): deliver it again later. */
  retry(reason: string): Promise<void>;
  /** The message can never succeed (corrupt chunk, bad message): set it aside with the reason. */
  park(reason: string): Promise<void>;
}

/**
 * How chunks are handed from dumpers to populators: in process for the embedded default,
 * SQS at fleet scale. At-least-once: a message is gone only after `ack`.
 */
export interface ChunkQueue {
  /** Waits while the queue is full, so a fast dumper cannot run far ahead of the writers. */
  send(message: ChunkMessage, signal?: AbortSignal): Promise<void>;
  /** The next message; undefined once the producers are done and nothing is left. */
  receive(signal?: AbortSignal): Promise<Delivery | undefined>;
}

export interface ParkedMessage {
  readonly message: ChunkMessage;
  readonly reason: string;
}
