import type { AddOutcome, PackedSelection, WritableItem, WrittenItem } from '../shared/memcached/meta-add.js';
import type { DeleteOutcome } from '../shared/memcached/meta-reconcile.js';

/**
 * Writes items add-only to one target node: the seam between routing (the populator) and the
 * wire protocol (meta commands by default; memjs's binary protocol for SASL-authenticated
 * servers).
 */
export interface NodeWriter {
  /**
   * Adds every item to the node at `address`, reporting outcomes as batches are answered.
   * Rejects, naming the node, when it stays unreachable; resolves only when nothing reads
   * `items` any more. `withCas`: each outcome lists the items stored with their CAS
   * (`written`), for a writer that can `deleteUnchanged`.
   */
  addItems(
    address: string,
    items: readonly WritableItem[],
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
    signal?: AbortSignal,
    withCas?: boolean,
  ): Promise<void>;
  /**
   * addItems for items packed in a buffer (a data chunk's records), written from where they
   * lie. Optional: without it, the items are handed to addItems as objects.
   */
  addPacked?(
    address: string,
    selection: PackedSelection,
    onOutcome: (outcome: AddOutcome, valueBytes: number) => void,
    signal?: AbortSignal,
    withCas?: boolean,
  ): Promise<void>;
  /**
   * Deletes each item only if the node still holds it with the CAS it was written with.
   * Optional: a writer without it cannot take back what it wrote (see DeleteReconciler).
   */
  deleteUnchanged?(address: string, items: readonly WrittenItem[], signal?: AbortSignal): Promise<DeleteOutcome>;
  /**
   * The CAS of each key's item on the node, undefined where it holds none: how the delete
   * reconcile names items an earlier attempt of the same adds may have stored. Comes with
   * deleteUnchanged.
   */
  casOf?(address: string, keys: readonly Buffer[], signal?: AbortSignal): Promise<(number | undefined)[]>;
  /**
   * Checks that the node answers (and, where it needs it, accepts our credentials); resolves
   * with the items it holds (`curr_items`), read the way this writer reaches the node.
   */
  probe(address: string, signal?: AbortSignal): Promise<number>;
  /**
   * `stats` read the way this writer reaches the node, for a writer whose nodes answer no
   * plain text-protocol connection (SASL). Others leave it out: a connection of its own is read.
   */
  stats?(address: string, signal?: AbortSignal): Promise<Map<string, string>>;
  /** Closes every connection. Idempotent. */
  close(): Promise<void>;
}
