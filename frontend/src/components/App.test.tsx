import { render, screen, waitFor, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { json, mockFetch } from '../test/fetch';
import type { Call } from '../test/fetch';
import { App } from './App';

const products = [
  { id: 1, ean: 1111, name: 'Orange', saldo: 5 },
  { id: 2, ean: 2222, name: 'Apple', saldo: 0 },
];
const warehouse = { identityProvider: 'aad', userId: 'w', userDetails: 'wendy', userRoles: ['anonymous', 'authenticated', 'Warehouse'] };

function open(path: string) {
  window.history.pushState(null, '', path);
  return render(<App />);
}

/** Common answers; `extra` handles the rest. */
function api(extra: (c: Call) => Response | undefined = () => undefined, principal: unknown = null) {
  return mockFetch((c) => {
    const r = extra(c);
    if (r) return r;
    if (c.path === '/.auth/me') return json(200, { clientPrincipal: principal });
    if (c.path === '/api/products') return json(200, products);
    return json(404, { error: { code: 'not_found', message: `no ${c.path}` } });
  });
}

beforeEach(() => window.history.pushState(null, '', '/'));
afterEach(() => vi.unstubAllGlobals());

describe('the shop', () => {
  it('lists products with stock and fills the cart', async () => {
    api();
    open('/');
    const orange = await screen.findByTestId('product-1');
    expect(within(orange).getByTestId('stock-1')).toHaveProperty('textContent', '5');
    expect(screen.getByRole('button', { name: 'Add Apple to cart' })).toHaveProperty('disabled', true);
    await userEvent.click(screen.getByRole('button', { name: 'Add Orange to cart' }));
    await userEvent.click(screen.getByRole('button', { name: 'Add Orange to cart' }));
    expect(screen.getByRole('link', { name: 'Cart (2)' })).toBeTruthy();
    expect(JSON.parse(localStorage.getItem('saldo.cart')!)).toEqual([{ id: 1, quantity: 2 }]);
    // No warehouse link for a visitor.
    expect(screen.queryByRole('link', { name: 'Warehouse' })).toBeNull();
    // Changing page moves focus to the new page's heading, for screen readers.
    await userEvent.click(screen.getByRole('link', { name: 'Cart (2)' }));
    expect(window.location.pathname).toBe('/cart');
    expect(screen.getByRole('heading', { level: 1, name: 'Your cart' })).toBe(document.activeElement);
  });

  it('checks out, retries with the same key after failures, and shows who executed it', async () => {
    localStorage.setItem('saldo.cart', JSON.stringify([{ id: 1, quantity: 2 }]));
    let posts = 0;
    const calls = api((c) => {
      if (c.method === 'POST' && c.path === '/api/orders') {
        posts++;
        // The first attempt's automatic tries all fail; the shopper's "Try again" succeeds.
        if (posts <= 3) return json(503, { error: { code: 'topic_unavailable', message: 'The topic is unavailable.' } });
        return json(202, { transaction: 'tx-1', status: 'pending' }, { Location: '/api/transactions/tx-1' });
      }
      if (c.path === '/api/transactions/tx-1') {
        return json(200, {
          transaction: 'tx-1',
          status: 'completed',
          executedBy: 'northeurope',
          executedRegion: 'northeurope',
          takeover: false,
          quantities: [{ id: 1, saldo: 3 }],
          nodes: [],
        });
      }
    });
    open('/cart');
    await screen.findByLabelText('Orange');
    await userEvent.click(screen.getByTestId('buy'));
    const status = screen.getByTestId('checkout-status');
    await waitFor(() => expect(status.textContent).toContain('The topic is unavailable.'), { timeout: 5000 });
    // The pending attempt survives a reload of the page (it is in sessionStorage).
    const pending = JSON.parse(sessionStorage.getItem('saldo.checkout')!);
    expect(pending.key).toBe(calls.find((c) => c.method === 'POST')!.headers['idempotency-key']);
    await userEvent.click(screen.getByRole('button', { name: 'Try again' }));
    await waitFor(() => expect(status.textContent).toContain('Completed by northeurope in northeurope'));
    const keys = calls.filter((c) => c.method === 'POST').map((c) => c.headers['idempotency-key']);
    expect(keys).toHaveLength(4);
    expect(new Set(keys).size).toBe(1);
    expect(screen.getByRole('link', { name: 'Cart (0)' })).toBeTruthy();
    expect(sessionStorage.getItem('saldo.checkout')).toBeNull();
    expect(JSON.parse(localStorage.getItem('saldo.recent')!)[0]).toMatchObject({ id: 'tx-1', kind: 'order', summary: '2 × Orange' });
  });

  it('shows a rejection with its reason', async () => {
    localStorage.setItem('saldo.cart', JSON.stringify([{ id: 1, quantity: 9 }]));
    api((c) => {
      if (c.method === 'POST') return json(202, { transaction: 'tx-2', status: 'pending' });
      if (c.path === '/api/transactions/tx-2')
        return json(200, { transaction: 'tx-2', status: 'rejected', reason: 'out of stock: Orange (id 1) has 5, needs 9', nodes: [] });
    });
    open('/cart');
    expect(await screen.findByTestId('short-1')).toHaveProperty('textContent', ' only 5 in stock');
    await userEvent.click(screen.getByTestId('buy'));
    await waitFor(() => expect(screen.getByTestId('checkout-status').textContent).toContain('Rejected: out of stock'));
  });
});

describe('the warehouse page', () => {
  it('is refused without the role', async () => {
    api();
    open('/warehouse');
    expect(await screen.findByTestId('warehouse-refused')).toBeTruthy();
  });

  it('sets a quantity for the role (matched without regard to case)', async () => {
    const calls = api((c) => {
      if (c.method === 'PUT') return json(202, { transaction: 'tx-3', status: 'pending' });
      if (c.path === '/api/transactions/tx-3')
        return json(200, { transaction: 'tx-3', status: 'completed', executedBy: 'westeurope', executedRegion: 'westeurope', nodes: [] });
    }, warehouse);
    open('/warehouse');
    const input = await screen.findByLabelText('Orange');
    await userEvent.type(input, '40{Enter}');
    await waitFor(() => expect(screen.getByTestId('warehouse-result-1').textContent).toBe('Completed by westeurope in westeurope'));
    expect(calls.find((c) => c.method === 'PUT')).toMatchObject({ path: '/api/products/1', body: { saldo: 40 } });
    expect(screen.getByRole('link', { name: 'Warehouse' })).toBeTruthy();
  });

  it('explains a bad number without calling the API', async () => {
    const calls = api(undefined, warehouse);
    open('/warehouse');
    await userEvent.type(await screen.findByLabelText('Orange'), '-3{Enter}');
    expect(screen.getByTestId('warehouse-result-1').textContent).toMatch(/whole number/);
    expect(calls.some((c) => c.method === 'PUT')).toBe(false);
  });
});

describe('the fleet page', () => {
  it('shows each region up or down and the transactions this browser placed', async () => {
    localStorage.setItem(
      'saldo.recent',
      JSON.stringify([
        { id: 'tx-1', kind: 'order', at: Date.now(), summary: '1 × Orange' },
        // From a stack that has since been restarted: the API answers 404, and the page forgets it.
        { id: 'tx-old', kind: 'order', at: Date.now() - 60_000, summary: '1 × Apple' },
      ]),
    );
    api((c) => {
      if (c.path === '/api/nodes')
        return json(200, {
          checkedAt: new Date().toISOString(),
          nodes: [
            { url: 'http://we', up: true, node: 'westeurope', region: 'westeurope', ready: true, lastHeartbeat: new Date().toISOString(), liveForPeers: 1, counters: { executed: 4, takenOver: 1 } },
            { url: 'http://sc', up: false, node: 'swedencentral', region: 'swedencentral', ready: false, liveForPeers: 0, counters: {}, error: 'This web app is stopped.' },
          ],
        });
      if (c.path === '/api/transactions/tx-1')
        return json(200, {
          transaction: 'tx-1',
          status: 'completed',
          executedBy: 'westeurope',
          executedRegion: 'westeurope',
          takeover: true,
          nodes: [
            { url: 'http://we', node: 'westeurope', state: 'completed', recordedAt: new Date().toISOString() },
            { url: 'http://sc', state: 'unreachable', error: 'stopped' },
          ],
        });
      if (c.path === '/api/transactions?limit=100')
        return json(200, {
          transactions: [
            {
              transaction: 'tx-other',
              status: 'completed',
              executedBy: 'westeurope',
              executedRegion: 'westeurope',
              takeover: true,
              executedAt: new Date(Date.now() - 1000).toISOString(),
              lines: [{ id: 1, name: 'Kiwi', change: -1 }],
              nodes: [
                { url: 'http://we', node: 'westeurope', state: 'completed', recordedAt: new Date(Date.now() - 4000).toISOString() },
                { url: 'http://sc', state: 'unreachable', error: 'stopped' },
              ],
            },
          ],
        });
    });
    open('/fleet');
    // The charts: the purchase someone else made, executed by westeurope after a 3 s takeover,
    // and swedencentral's down window (open: it is still down).
    const rate = await screen.findByTestId('chart-rate');
    await waitFor(() => expect(rate.getAttribute('data-total')).toBe('1'));
    expect(screen.getByTestId('executed-westeurope').dataset).toMatchObject({ executed: '1', takenOver: '1' });
    expect(screen.getByTestId('executed-swedencentral').dataset.executed).toBe('0');
    expect(screen.getByTestId('chart-latency').dataset.samples).toBe('1');
    expect(screen.getByTestId('chart-latency').textContent).toMatch(/3\.0 s/);
    for (const c of ['rate', 'latency', 'backlog']) {
      expect(screen.getByTestId(`chart-${c}`).querySelector('[data-testid="down-swedencentral"]')?.getAttribute('data-open')).toBe('true');
    }
    expect(screen.getByTestId('behind-swedencentral').textContent).toContain('not answering');
    expect(screen.getByTestId('behind-westeurope').dataset.behind).toBe('0');
    expect((await screen.findByTestId('node-state-swedencentral')).textContent).toBe('down');
    expect(screen.getByTestId('node-state-westeurope').textContent).toBe('up');
    expect(screen.getByTestId('counter-westeurope-takenOver').textContent).toBe('1');
    const item = await screen.findByTestId('timeline-tx-tx-1');
    await waitFor(() => expect(item.getAttribute('data-status')).toBe('completed'));
    expect(item.textContent).toContain('completed by westeurope in westeurope');
    expect(item.textContent).toContain('taken over');
    expect(item.textContent).toContain('swedencentral: unreachable');
    await waitFor(() => expect(screen.queryByTestId('timeline-tx-tx-old')).toBeNull());
    expect(JSON.parse(localStorage.getItem('saldo.recent')!).map((t: { id: string }) => t.id)).toEqual(['tx-1']);
  });
});
