/**
 * The absolute expiry to copy for an item read with `mg ... t`, or undefined when it has
 * expired. The crawler's `exp=` is exact but may be stale (a touch changes it); the TTL
 * read with the value is current but relative, with a second of rounding. Prefer the exact
 * one when the two agree.
 */
export function absoluteExpiry(ttlSeconds: number, crawledExptime: number, nowSeconds: number): number | undefined {
  if (ttlSeconds < 0) return 0;
  if (ttlSeconds === 0) return undefined;
  const estimate = nowSeconds + ttlSeconds;
  if (crawledExptime > 0 && Math.abs(crawledExptime - estimate) <= 1) return crawledExptime;
  return estimate;
}

/** Whether an absolute expiry (0: none) has passed: memcached drops an item when exptime <= now. */
export function hasExpired(exptime: number, nowSeconds: number): boolean {
  return exptime !== 0 && exptime <= nowSeconds;
}
