// @vitest-environment node
// Pure logic: no DOM needed, and the node environment starts much faster than jsdom.
import { describe, expect, it } from 'vitest';
import { ApiError } from './api';
import type { Accepted, OrderLine, Transaction } from './api';
import { backoff, describeOutcome, followTransaction, IdempotencyKeys, StillPending, submitOrder } from './checkout';

const lines: OrderLine[] = [{ id: 1, quantity: 2 }];
const counter = () => {
  let n = 0;
  return () => `key-${++n}`;
};
const tx = (status: Transaction['status'], extra: Partial<Transaction> = {}): Transaction => ({
  transaction: 't1',
  status,
  takeover: false,
  quantities: [],
  nodes: [],
  ...extra,
});

/** A sleep that returns at once and records what it was asked to wait. */
function fakeSleep() {
  const waits: number[] = [];
  return { waits, sleep: async (ms: number) => void waits.push(ms) };
}

describe('idempotency keys', () => {
  it('reuses the key while the cart is unchanged and the order not accepted', () => {
    const keys = new IdempotencyKeys(counter());
    expect(keys.keyFor(lines)).toBe('key-1');
    expect(keys.keyFor([{ id: 1, quantity: 2 }])).toBe('key-1');
    expect(keys.keyFor([{ id: 1, quantity: 3 }])).toBe('key-2');
    keys.settle();
    expect(keys.keyFor([{ id: 1, quantity: 3 }])).toBe('key-3');
  });

  it('keeps a pending attempt in its store, so a reloaded page reuses the key', () => {
    let saved: string | null = null;
    const store = { load: () => saved, save: (v: string | null) => void (saved = v) };
    expect(new IdempotencyKeys(counter(), store).keyFor(lines)).toBe('key-1');
    // A new page (new object, same store) with the same cart: same key.
    const again = new IdempotencyKeys(() => 'fresh', store);
    expect(again.keyFor(lines)).toBe('key-1');
    again.settle();
    expect(saved).toBeNull();
    expect(new IdempotencyKeys(() => 'fresh', store).keyFor(lines)).toBe('fresh');
    // A damaged store is ignored.
    saved = '{broken';
    expect(new IdempotencyKeys(() => 'new', store).keyFor(lines)).toBe('new');
  });

  it('uses random UUIDs by default', () => {
    const a = new IdempotencyKeys().keyFor(lines);
    const b = new IdempotencyKeys().keyFor(lines);
    expect(a).toMatch(/^[0-9a-f-]{36}$/);
    expect(a).not.toBe(b);
  });
});

describe('backoff', () => {
  it('grows and is capped', () => {
    const d = [0, 1, 2, 3, 4, 5, 6, 7, 20].map((a) => backoff(a));
    expect(d.slice(0, 3)).toEqual([300, 450, 675]);
    for (let i = 1; i < d.length; i++) expect(d[i]).toBeGreaterThanOrEqual(d[i - 1]);
    expect(Math.max(...d)).toBe(2000);
  });
});

describe('submitting an order', () => {
  const ok: Accepted = { transaction: 't1', status: 'pending' };

  it('retries temporary failures with the same key, then settles', async () => {
    const keys = new IdempotencyKeys(counter());
    const seen: string[] = [];
    const { waits, sleep } = fakeSleep();
    const place = async (_l: OrderLine[], key: string) => {
      seen.push(key);
      if (seen.length === 1) throw new ApiError(0, 'network', 'offline');
      if (seen.length === 2) throw new ApiError(503, 'topic_unavailable', 'busy');
      return ok;
    };
    await expect(submitOrder(lines, keys, { place, sleep })).resolves.toEqual(ok);
    expect(seen).toEqual(['key-1', 'key-1', 'key-1']);
    expect(waits).toHaveLength(2);
    // Accepted: the next checkout of the same cart is a new purchase.
    expect(keys.keyFor(lines)).toBe('key-2');
  });

  it('keeps the key after giving up, so a manual retry cannot buy twice', async () => {
    const keys = new IdempotencyKeys(counter());
    const seen: string[] = [];
    const place = async (_l: OrderLine[], key: string): Promise<Accepted> => {
      seen.push(key);
      throw new ApiError(502, 'http_502', 'bad gateway');
    };
    const { sleep } = fakeSleep();
    await expect(submitOrder(lines, keys, { place, sleep, tries: 3 })).rejects.toThrow('bad gateway');
    expect(seen).toHaveLength(3);
    await expect(submitOrder(lines, keys, { place, sleep, tries: 1 })).rejects.toThrow();
    expect(new Set(seen)).toEqual(new Set(['key-1']));
  });

  it('does not retry what the API refused', async () => {
    let calls = 0;
    const place = async (): Promise<Accepted> => {
      calls++;
      throw new ApiError(422, 'unknown_products', 'no product 9');
    };
    await expect(submitOrder(lines, new IdempotencyKeys(), { place, sleep: fakeSleep().sleep })).rejects.toMatchObject({
      status: 422,
      code: 'unknown_products',
    });
    expect(calls).toBe(1);
  });

  it('refuses an empty cart without calling the API', async () => {
    const place = async (): Promise<Accepted> => {
      throw new Error('must not be called');
    };
    await expect(submitOrder([], new IdempotencyKeys(), { place })).rejects.toMatchObject({ code: 'empty_cart' });
  });
});

describe('following a transaction', () => {
  it('polls with growing delays until an outcome, reporting every answer', async () => {
    const answers = [tx('pending'), tx('pending'), tx('completed', { executedBy: 'westeurope', region: 'westeurope' })];
    const seen: string[] = [];
    const { waits, sleep } = fakeSleep();
    const result = await followTransaction('t1', {
      get: async () => answers.shift()!,
      sleep,
      onUpdate: (t) => seen.push(t.status),
    });
    expect(result.status).toBe('completed');
    expect(seen).toEqual(['pending', 'pending', 'completed']);
    expect(waits).toEqual([backoff(0), backoff(1)]);
  });

  it('rides out 404 and 503 answers, but not other errors', async () => {
    const errors = [new ApiError(404, 'transaction_not_found', 'nope'), new ApiError(503, 'no_node_available', 'down')];
    const result = await followTransaction('t1', {
      get: async () => {
        const e = errors.shift();
        if (e) throw e;
        return tx('rejected', { reason: 'out of stock: Orange (id 1) has 0, needs 2' });
      },
      sleep: fakeSleep().sleep,
    });
    expect(result.status).toBe('rejected');

    await expect(
      followTransaction('t1', {
        get: async () => {
          throw new ApiError(400, 'invalid_request', 'bad id');
        },
        sleep: fakeSleep().sleep,
      }),
    ).rejects.toMatchObject({ status: 400 });
  });

  it('gives up at the deadline with the last answer', async () => {
    let now = 0;
    const err = await followTransaction('t1', {
      get: async () => tx('pending'),
      sleep: async (ms) => void (now += ms),
      now: () => now,
      deadlineMs: 10_000,
    }).catch((e) => e);
    expect(err).toBeInstanceOf(StillPending);
    expect(err.last.status).toBe('pending');
    expect(now).toBeGreaterThanOrEqual(10_000);
    expect(now).toBeLessThan(10_000 + 2_000 + 1);
  });
});

describe('describing the outcome', () => {
  it('names the node and region, or the reason', () => {
    expect(describeOutcome(tx('completed', { executedBy: 'northeurope', region: 'northeurope' }))).toBe(
      'Completed by northeurope in northeurope',
    );
    expect(describeOutcome(tx('rejected', { reason: 'out of stock: Orange (id 1) has 0, needs 2' }))).toBe(
      'Rejected: out of stock: Orange (id 1) has 0, needs 2',
    );
    expect(
      describeOutcome(
        tx('pending', {
          nodes: [
            { node: 'a', reachable: true, recordedAt: '2026-01-01T00:00:00Z' },
            { node: 'b', reachable: false },
          ],
        }),
      ),
    ).toBe('Pending (received by 1 of 2 nodes)');
  });
});
