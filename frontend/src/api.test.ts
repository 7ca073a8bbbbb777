// @vitest-environment node
// Pure logic: no DOM needed, and the node environment starts much faster than jsdom.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiError, getFleet, getNodes, getPrincipal, getProducts, getTransaction, isRetryable, placeOrder, REQUEST_TIMEOUT_MS, setSaldo } from './api';
import { json, mockFetch } from './test/fetch';

afterEach(() => {
  vi.unstubAllGlobals();
  vi.useRealTimers();
});

/** A fetch that never answers (a hung stack) but, like the real one, obeys its signal. */
function hangingFetch(body?: 'hang-body') {
  vi.stubGlobal(
    'fetch',
    vi.fn(
      (_: string, init: RequestInit = {}) =>
        new Promise<Response>((resolve, reject) => {
          const abort = () => reject(init.signal?.reason ?? new DOMException('aborted', 'AbortError'));
          init.signal?.addEventListener('abort', abort, { once: true });
          if (body) {
            // Headers arrive, the body never does (a proxy that stalls mid-answer).
            const stream = new ReadableStream({
              start(c) {
                init.signal?.addEventListener('abort', () => c.error(init.signal?.reason), { once: true });
              },
            });
            resolve(new Response(stream, { status: 200 }));
          }
        }),
    ),
  );
}

describe('API client timeouts', () => {
  it('gives up on a stack that does not answer, with a retryable error that says so', async () => {
    vi.useFakeTimers();
    hangingFetch();
    const pending = getProducts().catch((e) => e);
    await vi.advanceTimersByTimeAsync(REQUEST_TIMEOUT_MS - 1);
    let settled = false;
    void pending.then(() => (settled = true));
    await Promise.resolve();
    expect(settled).toBe(false);
    await vi.advanceTimersByTimeAsync(1);
    const err = await pending;
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 0, code: 'timeout' });
    expect(err.message).toMatch(/did not answer within 10 s/);
    expect(isRetryable(err)).toBe(true);
  });

  it('bounds the body as well as the answer', async () => {
    vi.useFakeTimers();
    hangingFetch('hang-body');
    const pending = getFleet().catch((e) => e);
    await vi.advanceTimersByTimeAsync(REQUEST_TIMEOUT_MS);
    await expect(pending).resolves.toMatchObject({ code: 'timeout' });
  });

  it("bounds posting an order too, and the caller's abort stays an abort", async () => {
    vi.useFakeTimers();
    hangingFetch();
    const order = placeOrder([{ id: 1, quantity: 1 }], 'k').catch((e) => e);
    await vi.advanceTimersByTimeAsync(REQUEST_TIMEOUT_MS);
    await expect(order).resolves.toMatchObject({ code: 'timeout' });

    const ctl = new AbortController();
    const read = getProducts(ctl.signal).catch((e) => e);
    ctl.abort(new DOMException('page closed', 'AbortError'));
    const err = await read;
    expect(err).not.toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ name: 'AbortError' });
  });
});

describe('API client errors', () => {
  it("reads the API's JSON error", async () => {
    mockFetch(() => json(422, { error: { code: 'unknown_products', message: 'no product 9' } }));
    const err = await placeOrder([{ id: 9, quantity: 1 }], 'k').catch((e) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err).toMatchObject({ status: 422, code: 'unknown_products', message: 'no product 9' });
    expect(isRetryable(err)).toBe(false);
  });

  it('describes a non-JSON error page by its status', async () => {
    mockFetch(() => new Response('<html>Bad Gateway</html>', { status: 502, statusText: 'Bad Gateway' }));
    const err = await getProducts().catch((e) => e);
    expect(err).toMatchObject({ status: 502, code: 'http_502' });
    expect(err.message).toBe("The shop's API is not answering (502 Bad Gateway). Is the stack running?");
    expect(isRetryable(err)).toBe(true);
  });

  it("says a stopped Function App's API is not answering, with the page's title", async () => {
    const page = '<!DOCTYPE html><html><head><title>Error 403 - This web app is stopped.</title></head><body>...</body></html>';
    mockFetch(() => new Response(page, { status: 403, statusText: 'Forbidden' }));
    const err = await getProducts().catch((e) => e);
    expect(err).toMatchObject({ status: 403, code: 'http_403' });
    expect(err.message).toBe("The shop's API is not answering (403 Forbidden: This web app is stopped). Is the stack running?");
  });

  it('turns a network failure into a retryable error with status 0', async () => {
    mockFetch(() => {
      throw new TypeError('Failed to fetch');
    });
    const err = await getProducts().catch((e) => e);
    expect(err).toMatchObject({ status: 0, code: 'network' });
    expect(isRetryable(err)).toBe(true);
  });

  it('treats a redirect (a role rule sending to the sign-in page) as sign-in required', async () => {
    mockFetch(() => new Response(null, { status: 302, headers: { Location: '/login' } }));
    await expect(setSaldo(1, 5, 'k')).rejects.toMatchObject({ status: 401, code: 'login_required' });
  });

  it('lets an abort through as an abort', async () => {
    mockFetch(() => {
      throw new DOMException('aborted', 'AbortError');
    });
    await expect(getProducts()).rejects.toMatchObject({ name: 'AbortError' });
  });

  it('rejects a 2xx answer that is not JSON', async () => {
    mockFetch(() => new Response('<html></html>', { status: 200 }));
    await expect(getProducts()).rejects.toMatchObject({ code: 'bad_response' });
  });
});

describe('API client requests', () => {
  it('places an order with its key and reads the Location', async () => {
    const calls = mockFetch(() => json(202, { transaction: 'tx1', status: 'pending' }, { Location: '/api/transactions/tx1' }));
    const accepted = await placeOrder([{ id: 1, quantity: 2 }], 'key-1');
    expect(accepted).toEqual({ transaction: 'tx1', status: 'pending', location: '/api/transactions/tx1' });
    expect(calls[0]).toMatchObject({
      method: 'POST',
      path: '/api/orders',
      body: { lines: [{ id: 1, quantity: 2 }] },
      headers: { 'idempotency-key': 'key-1', 'content-type': 'application/json' },
    });
  });

  it('sets a quantity with PUT and a key', async () => {
    const calls = mockFetch(() => json(202, { transaction: 'tx2', status: 'pending' }));
    await setSaldo(7, 40, 'key-2');
    expect(calls[0]).toMatchObject({ method: 'PUT', path: '/api/products/7', body: { saldo: 40 }, headers: { 'idempotency-key': 'key-2' } });
  });

  it('refuses a 202 that names no transaction', async () => {
    mockFetch(() => json(202, {}));
    await expect(placeOrder([{ id: 1, quantity: 1 }], 'k')).rejects.toMatchObject({ code: 'bad_response' });
  });

  it("maps the API's transaction view, nodes that did not answer included", async () => {
    mockFetch(() =>
      json(200, {
        transaction: 'tx1',
        status: 'completed',
        executedBy: 'northeurope',
        executedRegion: 'northeurope',
        takeover: true,
        executedAt: '2026-11-23T22:00:01Z',
        quantities: [{ id: 1, saldo: 3 }],
        lines: [],
        nodes: [
          { url: 'http://a', node: 'westeurope', state: 'completed', recordedAt: '2026-11-23T22:00:00Z' },
          { url: 'http://b', state: 'unknown' },
          { url: 'http://c', state: 'unreachable', error: '403' },
        ],
      }),
    );
    const t = await getTransaction('tx1');
    expect(t).toMatchObject({ status: 'completed', executedBy: 'northeurope', region: 'northeurope', takeover: true, executedAt: '2026-11-23T22:00:01Z' });
    expect(t.nodes.map((n) => [n.node, n.reachable, n.recordedAt !== undefined])).toEqual([
      ['westeurope', true, true],
      ['http://b', true, false],
      ['http://c', false, false],
    ]);
  });

  it('rejects a transaction view with an unknown status', async () => {
    mockFetch(() => json(200, { transaction: 'tx1', status: 'lost' }));
    await expect(getTransaction('tx1')).rejects.toMatchObject({ code: 'bad_response' });
  });

  it('reads the fleet, naming a silent node by its URL', async () => {
    mockFetch(() =>
      json(200, {
        checkedAt: '2026-11-23T22:00:00Z',
        nodes: [
          { url: 'http://a', up: true, node: 'westeurope', region: 'westeurope', ready: true, liveForPeers: 2, counters: { executed: 3 } },
          { url: 'http://c', up: false, ready: false, liveForPeers: 0, counters: {}, error: 'connection refused' },
        ],
      }),
    );
    const fleet = await getFleet();
    expect(fleet.checkedAt).toBe(Date.parse('2026-11-23T22:00:00Z'));
    expect(fleet.nodes).toHaveLength(2);
    const nodes = await getNodes();
    expect(nodes[0]).toMatchObject({ node: 'westeurope', up: true, counters: { executed: 3 } });
    expect(nodes[1]).toMatchObject({ node: 'http://c', region: 'unknown region', up: false, error: 'connection refused' });
  });

  it('reads the signed-in principal, or null', async () => {
    mockFetch(() => json(200, { clientPrincipal: null }));
    await expect(getPrincipal()).resolves.toBeNull();
    mockFetch(() => json(200, { clientPrincipal: { identityProvider: 'aad', userId: 'u', userDetails: 'w', userRoles: ['warehouse'] } }));
    await expect(getPrincipal()).resolves.toMatchObject({ userRoles: ['warehouse'] });
  });
});
