/**
 * Reuses large buffers. On a virtual machine the first touch of fresh memory is a page fault
 * the hypervisor must back, and that, not copying, was most of a warm's CPU (measured: a
 * fresh 16 MiB buffer per chunk made copying ten times slower than reusing one). Buffers
 * come in power-of-two sizes; what is kept for reuse is capped at `maxRetainedBytes`.
 *
 * A released buffer must not be used again by whoever released it.
 */
export class BufferPool {
  private readonly free = new Map<number, ArrayBuffer[]>();
  private retainedBytes = 0;

  constructor(readonly maxRetainedBytes = 256 << 20) {}

  /** A buffer of at least `minBytes` (its length is the size class: slice what you use). */
  acquire(minBytes: number): Buffer {
    const size = sizeClass(minBytes);
    const reused = this.free.get(size)?.pop();
    if (reused) {
      this.retainedBytes -= size;
      return Buffer.from(reused);
    }
    // allocUnsafeSlow: a dedicated ArrayBuffer, never a slice of Node's shared small pool.
    return Buffer.allocUnsafeSlow(size);
  }

  /** Gives back a buffer from `acquire` (or any view of it). */
  release(view: Uint8Array): void {
    const buffer = view.buffer;
    const size = buffer.byteLength;
    if (!(buffer instanceof ArrayBuffer) || size !== sizeClass(size)) return;
    if (this.retainedBytes + size > this.maxRetainedBytes) return;
    let list = this.free.get(size);
    if (!list) {
      list = [];
      this.free.set(size, list);
    }
    if (list.includes(buffer)) throw new Error('a buffer was released twice');
    list.push(buffer);
    this.retainedBytes += size;
  }
}

const MIN_CLASS = 64 << 10;

function sizeClass(bytes: number): number {
  let size = MIN_CLASS;
  while (size < bytes) size *= 2;
  return size;
}
