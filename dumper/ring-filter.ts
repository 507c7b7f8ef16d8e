import { KetamaRing } from '../shared/ketama.js';

/**
 * A key filter for a dump that copies only some nodes' share: true for a key whose node, on
 * the given ring (the ring of the replica being warmed), is one of `addresses`.
 */
export function ringFilter(
  ring: readonly { readonly address: string; readonly ringName: string }[],
  addresses: readonly string[],
): (key: Buffer) => boolean {
  const wanted = new Set(addresses);
  const unknown = addresses.filter((a) => !ring.some((n) => n.address === a));
  if (unknown.length > 0) throw new Error(`not on the ring: ${unknown.join(', ')}`);
  const keep = ring.map((n) => wanted.has(n.address));
  const hashRing = new KetamaRing(ring, (n) => n.ringName);
  return (key) => keep[hashRing.indexFor(key)] === true;
}
