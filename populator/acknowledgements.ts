import type { Delivery } from '../shared/chunk-queue.js';

export interface ReportedAcknowledgementsOptions {
  /**
   * Writes the worker's report, counting every chunk acknowledged so far (the batch's among
   * them). Reports must be written one at a time, each a snapshot taken when its turn comes.
   */
  readonly report: (batch: readonly Delivery[]) => Promise<void>;
  /** Deletes the messages of deliveries their report counts (one DeleteMessageBatch per 10). */
  readonly deleteAll: (deliveries: readonly Delivery[]) => Promise<void>;
  /** A delivery whose report could not be written: handed back, written again (as `existed`) and counted then. */
  readonly handBack: (delivery: Delivery, reason: string) => Promise<void>;
  /** How a batch ended: deleted, or not (then its messages come back, by hand-back or their visibility timeout). */
  readonly onSettled?: ((outcome: AcknowledgedBatch) => void) | undefined;
  /** A batch goes as soon as this many are waiting (SQS deletes 10 per call). Default 10. */
  readonly maxBatch?: number;
}

/** A batch of messages whose report was written and that were deleted, or not (with why, and whether they were handed back). */
export type AcknowledgedBatch = { readonly chunks: readonly string[] } & (
  | { readonly deleted: true }
  | { readonly deleted: false; readonly reason: string; readonly handedBack: boolean }
);

/**
 * Acknowledgements that wait for the worker's report: a message is deleted only once a report
 * counting its chunk is in the store, so the controller's sum of the reports keeps the writes
 * of a worker that dies. One that dies first leaves its messages to be delivered again, and
 * what they hold is then counted as `existed` (the writes are add-only). (Dying between a
 * report and its delete counts that batch twice, once as stored and once as existed: the
 * window is one DeleteMessageBatch.)
 *
 * Cost: a report PUT per batch, a batch being what was acknowledged since the last flush
 * (the caller flushes about every second) or 10 messages, whichever comes first: at most
 * 1 + (chunks per second ÷ 10) S3 PUTs per second per worker while it writes — about 2/s at
 * 4 MiB chunks and 50k items/s — and none while it has nothing to acknowledge.
 */
export class ReportedAcknowledgements {
  /** Acknowledged and not yet deleted: still held, their visibility renewed. */
  private readonly waiting: Delivery[] = [];
  /** The flush running or last run: flushes go one after another. */
  private turn: Promise<void> = Promise.resolve();
  private readonly maxBatch: number;

  constructor(private readonly options: ReportedAcknowledgementsOptions) {
    this.maxBatch = options.maxBatch ?? 10;
  }

  /** The delivery's chunk is written and counted: its message goes with the next report. */
  add(delivery: Delivery): void {
    this.waiting.push(delivery);
    if (this.waiting.length >= this.maxBatch) void this.flush();
  }

  /** Reports, then deletes, everything acknowledged until this flush's turn. Never rejects. */
  flush(): Promise<void> {
    this.turn = this.turn.then(() => {
      const batch = this.waiting.splice(0);
      return batch.length > 0 ? this.settle(batch) : undefined;
    });
    return this.turn;
  }

  private async settle(batch: Delivery[]): Promise<void> {
    const { options } = this;
    const chunks = batch.map((delivery) => delivery.message.chunk.name);
    try {
      await options.report(batch);
    } catch (error) {
      // Deleting now would lose what the batch wrote from every report.
      const reason = `its report could not be written: ${messageOf(error)}`;
      await Promise.allSettled(batch.map((delivery) => options.handBack(delivery, reason)));
      options.onSettled?.({ chunks, deleted: false, reason, handedBack: true });
      return;
    }
    try {
      await options.deleteAll(batch);
      options.onSettled?.({ chunks, deleted: true });
    } catch (error) {
      options.onSettled?.({ chunks, deleted: false, reason: messageOf(error), handedBack: false });
    }
  }
}

const messageOf = (error: unknown): string => (error instanceof Error ? error.message : String(error));
