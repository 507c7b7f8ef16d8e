import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { EXPIRY_SLACK_SECONDS, ServerClock, absoluteExpiry, hasExpired } from '../shared/expiry.js';

describe('the expiry copied for an item', () => {
  test('no TTL is no expiry; a TTL of 0 has expired; otherwise the crawled expiry when it agrees with now + TTL', () => {
    assert.equal(absoluteExpiry(-1, 0, 1_000), 0);
    assert.equal(absoluteExpiry(0, 1_000, 1_000), undefined);
    assert.equal(absoluteExpiry(60, 1_061, 1_000), 1_061, 'within a second: the exact crawled value');
    assert.equal(absoluteExpiry(60, 2_000, 1_000), 1_060, 'touched since the crawl: now + TTL');
    assert.equal(absoluteExpiry(60, 0, 1_000), 1_060);
    // Sent at 1,000, answered at 1,004 (a busy server): read at 1,003, the crawled value holds.
    assert.equal(absoluteExpiry(60, 1_063, { earliest: 1_000, latest: 1_004 }), 1_063, 'read while the request waited its turn');
    assert.equal(absoluteExpiry(60, 1_070, { earliest: 1_000, latest: 1_004 }), 1_064, 'touched: the answer time + TTL');
  });

  test('hasExpired: memcached drops an item when its expiry is at or before now', () => {
    assert.equal(hasExpired(0, 5), false);
    assert.equal(hasExpired(5, 5), true);
    assert.equal(hasExpired(6, 5), false);
  });
});

describe("a source node's clock, learnt from what it answers", () => {
  test('a server lagging our clock by 2 s: its now is learnt, and crawled expiries are kept exact', () => {
    const clock = new ServerClock();
    const ours = 10_000;
    const serverNow = ours - 2;
    // Untouched items: crawled expiry - TTL = the server's now.
    for (let i = 0; i < 40; i++) clock.observe(serverNow + 100 + i, 100 + i, ours);
    assert.equal(clock.nowSeconds(ours), serverNow);
    assert.equal(absoluteExpiry(500, serverNow + 500, clock.nowSeconds(ours)), serverNow + 500);
    // With our own clock the same item would have been moved 2 s later.
    assert.equal(absoluteExpiry(500, serverNow + 500, ours), ours + 500);
  });

  test('items touched since the crawl do not move the estimate, and get the server now + their TTL', () => {
    const clock = new ServerClock();
    const ours = 20_000;
    for (let i = 0; i < 60; i++) clock.observe(ours - 1 + 300, 300, ours);
    for (let i = 0; i < 10; i++) clock.observe(ours + 9_999, 50, ours); // touched: stale crawled expiry
    assert.equal(clock.nowSeconds(ours), ours - 1);
    assert.equal(absoluteExpiry(50, ours + 9_999, clock.nowSeconds(ours)), ours - 1 + 50);
  });

  test('a server clock that falls 2 s behind at once (a late timer tick): items read then keep their crawled expiry', () => {
    const clock = new ServerClock();
    const ours = 30_000;
    for (let i = 0; i < 64; i++) clock.observe(ours - 1 + 200, 200, ours);
    const window = { earliest: clock.nowSeconds(ours), latest: clock.nowSeconds(ours), slackSeconds: EXPIRY_SLACK_SECONDS };
    // Read while the server lagged 3 s: its crawled expiry, not ours - 1 + TTL (2 s later).
    assert.equal(absoluteExpiry(200, ours - 3 + 200, window), ours - 3 + 200);
    assert.equal(absoluteExpiry(200, ours - 3 + 200, { earliest: ours - 1, latest: ours - 1 }), ours - 1 + 200, 'with a 1 s slack: moved 2 s later');
    // Touched since the crawl, its expiry moved by more than the slack: the server's now + TTL.
    assert.equal(absoluteExpiry(200, ours + 600, window), ours - 1 + 200);
  });

  test('with nothing learnt (no expiring item yet), our clock stands in', () => {
    const clock = new ServerClock();
    clock.observe(0, 100, 5_000);
    clock.observe(5_100, -1, 5_000);
    assert.equal(clock.nowSeconds(5_000), 5_000);
  });
});
