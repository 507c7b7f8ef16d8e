/**
 * The absolute expiry to copy for an item read with `mg ... t`, or undefined when it has
 * expired. The crawler's `exp=` is exact but may be stale (a touch changes it); the TTL
 * read with the value is current but relative, with a second of rounding. Prefer the exact
 * one when the two agree: when `exp= − TTL`, the server's now at the read, falls within the
 * server's now between the request's sending and its answer (`nowSeconds`, a window when
 * pipelined requests wait their turn on a busy server), give or take `slackSeconds` (1 by
 * default: the rounding; EXPIRY_SLACK_SECONDS when that now is estimated from our clock).
 */
export function absoluteExpiry(
  ttlSeconds: number,
  crawledExptime: number,
  nowSeconds: number | { readonly earliest: number; readonly latest: number; readonly slackSeconds?: number },
): number | undefined {
  if (typeof nowSeconds === 'number') return absoluteExpiryBetween(ttlSeconds, crawledExptime, nowSeconds, nowSeconds, 1);
  return absoluteExpiryBetween(ttlSeconds, crawledExptime, nowSeconds.earliest, nowSeconds.latest, nowSeconds.slackSeconds ?? 1);
}

/** absoluteExpiry with the server's now given as its bounds: no object per item (the dumper calls this for every one). */
export function absoluteExpiryBetween(
  ttlSeconds: number,
  crawledExptime: number,
  earliestSeconds: number,
  latestSeconds: number,
  slackSeconds: number,
): number | undefined {
  if (ttlSeconds < 0) return 0;
  if (ttlSeconds === 0) return undefined;
  const readAt = crawledExptime - ttlSeconds;
  if (crawledExptime > 0 && readAt >= earliestSeconds - slackSeconds && readAt <= latestSeconds + slackSeconds) return crawledExptime;
  return latestSeconds + ttlSeconds;
}

/**
 * memcached's own clock as seen from here. It ticks once a second on a timer, and under load
 * it lags the wall clock (seen: 2 s on a busy 2-core machine), so "now + TTL" computed with
 * our clock would move expiries later by that lag. An item's crawled absolute expiry minus
 * the TTL read with it is the server's now, exactly, unless the item was touched since the
 * crawl: the most frequent of the recent differences is the server's offset from our clock.
 */
export class ServerClock {
  private readonly offsets: number[] = [];
  private next = 0;
  private offset = 0;

  /** Learns from an item read with its TTL whose crawled absolute expiry is known. */
  observe(crawledExptime: number, ttlSeconds: number, clientNowSeconds: number): void {
    if (crawledExptime <= 0 || ttlSeconds <= 0) return;
    const seen = crawledExptime - ttlSeconds - clientNowSeconds;
    if (this.offsets.length < RECENT) this.offsets.push(seen);
    else this.offsets[this.next % RECENT] = seen;
    if (++this.next % (RECENT / 4) === 0 || this.offsets.length < RECENT) this.offset = mode(this.offsets);
  }

  /** The server's now, in unix seconds, for our clock's `clientNowSeconds`. */
  nowSeconds(clientNowSeconds: number): number {
    return clientNowSeconds + this.offset;
  }
}

const RECENT = 64;

/**
 * How far a crawled expiry's implied read time may be from the server's now as estimated here
 * and still be kept. memcached's clock ticks on a timer that a busy machine fires late (seen:
 * 2 s behind its usual offset, at once), so a tighter bound moved exact expiries later by the
 * lag, which would let a copy outlive its source. An item touched since the crawl whose expiry
 * moved by less than this keeps the crawled one: earlier than its new one, for a touch that
 * extends it (the safe side).
 */
export const EXPIRY_SLACK_SECONDS = 5;

function mode(values: readonly number[]): number {
  const counts = new Map<number, number>();
  let best = 0;
  let bestCount = 0;
  for (const v of values) {
    const c = (counts.get(v) ?? 0) + 1;
    counts.set(v, c);
    if (c > bestCount) {
      best = v;
      bestCount = c;
    }
  }
  return best;
}

/** Whether an absolute expiry (0: none) has passed: memcached drops an item when exptime <= now. */
export function hasExpired(exptime: number, nowSeconds: number): boolean {
  return exptime !== 0 && exptime <= nowSeconds;
}
