// The fleet page's live charts during the demo: shoppers buy at a steady rate, a region stops
// (its window is shaded, the others execute its share), it starts again and catches up. Also:
// a stopped or hung API shows a clear message instead of a spinner, and the local-only sign-in.
// Screenshots go to tests/e2e/artifacts/.

import type { APIRequestContext, Locator, Page } from '@playwright/test';
import { expect, expectAccessible, setApi, setRegion, shot, shotOf, test, transactionTimeout, WAREHOUSE } from '../stack';
import type { Stack, StackNode } from '../stack';

test.describe.configure({ mode: 'serial' });

/** Not the shop spec's Orange: these tests leave its stock alone. */
const PRODUCT = 'Apple';
const STOCK = 100_000;
/** One purchase every this many ms while the scenario runs: a steady, visible rate. */
const PACE_MS = 250;

const warehouseCookie = `StaticWebAppsAuthCookie=${Buffer.from(JSON.stringify(WAREHOUSE)).toString('base64')}`;

async function productId(request: APIRequestContext, stack: Stack): Promise<number> {
  const products = (await (await request.get(`${stack.spa.url}/api/products`)).json()) as { id: number; name: string }[];
  const p = products.find((x) => x.name === PRODUCT);
  if (!p) throw new Error(`no product ${PRODUCT} in the catalogue`);
  return p.id;
}

async function settled(request: APIRequestContext, stack: Stack, tx: string): Promise<string> {
  let status = 'pending';
  await expect
    .poll(
      async () => {
        const res = await request.get(`${stack.spa.url}/api/transactions/${tx}`);
        status = res.ok() ? (await res.json()).status : 'pending';
        return status;
      },
      { timeout: transactionTimeout(stack), intervals: [250, 500, 1000] },
    )
    .not.toBe('pending');
  return status;
}

/** Buys one unit every PACE_MS until stopped; counts what the API accepted and refused. */
function shoppers(request: APIRequestContext, stack: Stack, id: number) {
  let running = true;
  const counts = { accepted: 0, refused: 0 };
  const loop = (async () => {
    let n = 0;
    while (running) {
      const started = Date.now();
      n += 1;
      const res = await request
        .post(`${stack.spa.url}/api/orders`, {
          data: { lines: [{ id, quantity: 1 }] },
          headers: { 'Idempotency-Key': `charts-${started}-${n}` },
          timeout: 15_000,
        })
        .catch(() => null);
      if (res?.status() === 202) counts.accepted += 1;
      else counts.refused += 1;
      await new Promise((r) => setTimeout(r, Math.max(0, PACE_MS - (Date.now() - started))));
    }
  })();
  return {
    counts,
    async stop() {
      running = false;
      await loop;
      return counts;
    },
  };
}

const executed = async (chart: Locator, region: string) => Number(await chart.getByTestId(`executed-${region}`).getAttribute('data-executed'));

async function totals(page: Page, regions: string[]): Promise<Record<string, number>> {
  const chart = page.getByTestId('chart-rate');
  return Object.fromEntries(await Promise.all(regions.map(async (r) => [r, await executed(chart, r)] as const)));
}

test.describe('the fleet charts while a region stops and catches up', () => {
  let stopped: StackNode | undefined;

  test.afterAll(async () => {
    if (stopped) await setRegion(stopped, 'start').catch(() => {});
  });

  test('purchases per second, latency, executions per region and the down window, live', async ({ page, stack, request }) => {
    test.setTimeout(10 * transactionTimeout(stack));
    const name = process.env.SALDO_E2E_REGION ?? stack.nodes[stack.nodes.length - 1].name;
    const node = stack.nodes.find((n) => n.name === name || n.region === name);
    if (!node) throw new Error(`no node ${name} in the stack`);
    const others = [...new Set(stack.nodes.filter((n) => n !== node).map((n) => n.region))];
    const charts = ['rate', 'latency', 'backlog'].map((c) => page.getByTestId(`chart-${c}`));

    const id = await productId(request, stack);
    const set = await request.put(`${stack.spa.url}/api/products/${id}`, {
      data: { saldo: STOCK },
      headers: { cookie: warehouseCookie, 'Idempotency-Key': `charts-stock-${Date.now()}` },
    });
    expect(set.status(), await set.text()).toBe(202);
    expect(await settled(request, stack, (await set.json()).transaction)).toBe('completed');

    await page.goto('/fleet');
    for (const c of charts) await expect(c).toBeVisible();
    const buying = shoppers(request, stack, id);
    try {
      await test.step('steady purchases draw bars and a latency line', async () => {
        const rate = page.getByTestId('chart-rate');
        await expect(rate).toHaveAttribute('data-total', /^[1-9]\d*$/, { timeout: transactionTimeout(stack) });
        await expect(page.getByTestId('chart-latency')).toHaveAttribute('data-samples', /^[1-9]\d*$/);
        await expect(rate.locator('svg rect').first()).toBeVisible();
        // Some history before the stop, so the picture shows a before and an after.
        await page.waitForTimeout(15_000);
        await expect(page.getByTestId(`down-${node.name}`)).toHaveCount(0);
        await expectAccessible(page);
        await shot(page, 'charts-steady');
      });

      let before: Record<string, number> = {};
      await test.step(`stop ${node.name}: its window is shaded, the others take its share`, async () => {
        before = await totals(page, others);
        await setRegion(node, 'stop');
        stopped = node;
        for (const c of charts) {
          await expect(c.getByTestId(`down-${node.name}`)).toHaveCount(1, { timeout: transactionTimeout(stack) });
          await expect(c.getByTestId(`down-${node.name}`)).toHaveAttribute('data-open', 'true');
        }
        await expect(page.getByTestId(`behind-${node.name}`)).toContainText('not answering');
        // Purchases keep completing, executed by the regions still running.
        for (const r of others) {
          await expect.poll(() => executed(page.getByTestId('chart-rate'), r), { timeout: transactionTimeout(stack) }).toBeGreaterThan(before[r]);
        }
        await page.waitForTimeout(20_000);
        await shot(page, 'charts-region-down');
        await shotOf(page.getByTestId('charts'), 'charts-region-down-closeup');
      });

      await test.step(`start ${node.name}: the window closes and its backlog drains`, async () => {
        await setRegion(node, 'start');
        stopped = undefined;
        for (const c of charts) {
          await expect(c.getByTestId(`down-${node.name}`)).toHaveAttribute('data-open', 'false', { timeout: transactionTimeout(stack) });
        }
        // The shoppers stop, and the restarted region catches up: it has recorded every recent
        // transaction (a just-completed one may be in flight). Known limit, measured in the
        // closing note of the second wave: while purchases keep flowing at this pace, a region
        // just started stays some tens of transactions behind for minutes (its subscription's
        // retries and its instances' ledger writes contend), so the drain is checked once the
        // shop is quiet.
        await page.waitForTimeout(10_000);
        await buying.stop();
        await expect
          .poll(async () => Number((await page.getByTestId(`behind-${node.name}`).getAttribute('data-behind')) || NaN), {
            timeout: 2 * transactionTimeout(stack),
          })
          .toBeLessThanOrEqual(2);
        await page.waitForTimeout(10_000);
        await expectAccessible(page);
        await shot(page, 'charts-caught-up');
        await shotOf(page.getByTestId('charts'), 'charts-caught-up-closeup');
      });
    } finally {
      const counts = await buying.stop();
      test.info().annotations.push({ type: 'purchases', description: `${counts.accepted} accepted, ${counts.refused} refused` });
      expect(counts.refused, 'every purchase accepted while a region was down').toBe(0);
    }
  });
});

test.describe('a stack that does not answer', () => {
  test('a stopped API shows a clear message, not a spinner', async ({ browser, stack }) => {
    test.skip(!stack.api.masterKey, 'the mock stack cannot stop its API');
    // Its own page: a stopped app answers 403, which the browser logs as a console error.
    const page = await browser.newPage({ baseURL: stack.spa.url });
    await setApi(stack, 'stop');
    try {
      await page.goto('/');
      const alert = page.getByRole('alert');
      await expect(alert).toContainText("The shop's API is not answering", { timeout: 30_000 });
      await expect(alert).toContainText('Is the stack running?');
      await expect(page.getByText('Loading products…')).toHaveCount(0);
      await shot(page, 'api-stopped');
      await page.goto('/fleet');
      await expect(page.getByRole('alert').first()).toContainText("The shop's API is not answering", { timeout: 30_000 });
      await expect(page.getByText('Loading the fleet…')).toHaveCount(0);
    } finally {
      await setApi(stack, 'start');
    }
    // And it recovers by itself once the API is back.
    await expect(page.getByTestId(/^node-state-/)).toHaveCount(stack.nodes.length, { timeout: 30_000 });
    await expect(page.getByRole('alert')).toHaveCount(0, { timeout: 30_000 });
    await page.close();
  });

  test('a hung API times out with a message', async ({ browser, stack }) => {
    const page = await browser.newPage({ baseURL: stack.spa.url });
    // Every product read hangs: no answer, ever.
    await page.route('**/api/products', () => {});
    await page.goto('/');
    await expect(page.getByText('Loading products…')).toBeVisible();
    await expect(page.getByRole('alert')).toContainText('did not answer within 10 s', { timeout: 30_000 });
    await expect(page.getByText('Loading products…')).toHaveCount(0);
    await shot(page, 'api-hung');
    await page.close();
  });
});

test('local-only sign-in as a shopper and as the warehouse', async ({ page }) => {
  await page.goto('/login');
  const box = page.getByTestId('local-signin');
  await expect(box).toContainText('Local stack only');
  await expectAccessible(page);
  await shot(page, 'local-signin');
  await page.getByTestId('local-signin-shopper').click();
  await expect(page.getByTestId('who')).toContainText('shopper@local.test');
  await expect(page.getByRole('link', { name: 'Warehouse' })).toHaveCount(0);
  await page.goto('/login');
  await page.getByTestId('local-signin-warehouse').click();
  await expect(page).toHaveURL(/\/warehouse$/);
  await expect(page.getByRole('heading', { level: 1, name: 'Warehouse' })).toBeVisible();
  await expect(page.getByTestId('who')).toContainText('warehouse@local.test (warehouse)');
  await page.getByRole('link', { name: 'Sign out' }).click();
  await expect(page.getByTestId('who')).toContainText('Sign in');
});
