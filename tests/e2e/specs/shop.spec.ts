// The demo, in a browser: browse, set stock as the warehouse, be refused as a shopper, buy and
// see stock fall, stop a region while buying and see every purchase complete, start it again and
// see it catch up. Each step leaves a screenshot in tests/e2e/artifacts/.

import type { Page } from '@playwright/test';
import { expect, expectAccessible, SHOPPER, setRegion, shot, signIn, test, transactionTimeout, WAREHOUSE, watchConsole } from '../stack';
import type { Stack, StackNode } from '../stack';

test.describe.configure({ mode: 'serial' });

/** The product the scenarios buy: the design plan's Orange. */
const PRODUCT = 'Orange';
const START_STOCK = 60;

async function productId(page: Page): Promise<number> {
  const card = page.getByTestId(/^product-\d+$/).filter({ has: page.getByRole('heading', { name: PRODUCT, exact: true }) });
  await expect(card).toHaveCount(1);
  return Number((await card.getAttribute('data-testid'))!.replace('product-', ''));
}

async function stockOf(page: Page, id: number): Promise<number> {
  return Number(await page.getByTestId(`stock-${id}`).innerText());
}

/** Puts `quantity` of product `id` in the cart and buys it; resolves to the transaction id. */
async function buy(page: Page, stack: Stack, quantity: number, expected: RegExp): Promise<string> {
  await page.goto('/');
  await page.getByRole('button', { name: `Add ${PRODUCT} to cart` }).click();
  await page.getByRole('link', { name: /^Cart/ }).click();
  await page.getByLabel(PRODUCT, { exact: true }).fill(String(quantity));
  await page.getByTestId('buy').click();
  const status = page.getByTestId('checkout-status');
  await expect(status).toHaveAttribute('data-step', /following|done/);
  const tx = await page.getByTestId('checkout-transaction').innerText();
  await expect(status).toHaveAttribute('data-step', 'done', { timeout: transactionTimeout(stack) });
  await expect(status).toContainText(expected);
  return tx;
}

const COMPLETED = /Completed by \S+ in \S+/;

test('browse the catalogue with live stock', async ({ page, stack }) => {
  await page.goto('/');
  await expect(page.getByRole('heading', { level: 1, name: 'Catalogue' })).toBeVisible();
  const id = await productId(page);
  await expect(page.getByTestId(`stock-${id}`)).toHaveText(/^-?\d+$/);
  await expect(page.getByRole('navigation', { name: 'Main' })).toBeVisible();
  // The warehouse link is only for the role.
  await expect(page.getByRole('link', { name: 'Warehouse' })).toHaveCount(0);
  await expectAccessible(page);
  await shot(page, 'catalogue');
  // A phone-sized screen: the grid folds to one column and nothing overflows sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
  await shot(page, 'catalogue-phone');
  await page.setViewportSize({ width: 1280, height: 720 });
  // Keyboard: the first Tab reaches the skip link, which leads to the content.
  await page.keyboard.press('Tab');
  await expect(page.getByRole('link', { name: 'Skip to content' })).toBeFocused();
  await page.getByRole('link', { name: 'Fleet' }).click();
  await expect(page.getByTestId(/^node-state-/)).toHaveCount(stack.nodes.length);
  await expectAccessible(page);
  await shot(page, 'fleet-healthy');
});

test('the warehouse sets a quantity', async ({ page, context, stack }) => {
  await signIn(context, stack.spa.url, WAREHOUSE);
  await page.goto('/');
  await expect(page.getByTestId('who')).toContainText(WAREHOUSE.userDetails);
  await page.getByRole('link', { name: 'Warehouse' }).click();
  await expect(page.getByRole('heading', { level: 1, name: 'Warehouse' })).toBeFocused();
  const input = page.getByLabel(PRODUCT, { exact: true });
  await input.fill(String(START_STOCK));
  await input.press('Enter'); // keyboard works: the row is a form
  const row = page.getByTestId(/^warehouse-row-/).filter({ has: page.getByText(PRODUCT, { exact: true }) });
  await expect(row.getByRole('status')).toContainText(COMPLETED, { timeout: transactionTimeout(stack) });
  await expect(row.getByTestId(/^warehouse-stock-/)).toHaveText(String(START_STOCK));
  await expectAccessible(page);
  await shot(page, 'warehouse-set');
});

test('a shopper is refused the warehouse', async ({ page, context, stack, request }) => {
  await signIn(context, stack.spa.url, SHOPPER);
  await page.goto('/warehouse');
  // The route rule answers 401, and the 401 override sends the browser to the sign-in page.
  await expect(page).toHaveURL(/\/login$/);
  await expect(page.getByTestId('warehouse-refused')).toBeVisible();
  await expectAccessible(page);
  await shot(page, 'shopper-refused');

  // The API route is guarded too, for anonymous callers and signed-in shoppers alike.
  const id = (await (await request.get(`${stack.spa.url}/api/products`)).json()).find((p: { name: string }) => p.name === PRODUCT).id;
  const cookie = `StaticWebAppsAuthCookie=${Buffer.from(JSON.stringify(SHOPPER)).toString('base64')}`;
  for (const headers of [{}, { cookie }] as Record<string, string>[]) {
    const res = await request.put(`${stack.spa.url}/api/products/${id}`, { data: { saldo: 1 }, headers, maxRedirects: 0 });
    expect(res.status(), 'a shopper must not set stock').not.toBeLessThan(300);
  }
  const after = await (await request.get(`${stack.spa.url}/api/products/${id}`)).json();
  expect(after.saldo).toBe(START_STOCK);
});

test('buy, see the stock fall, and be told when it is out of stock', async ({ page, stack }) => {
  await page.goto('/');
  const id = await productId(page);
  const before = await stockOf(page, id);
  await buy(page, stack, 2, COMPLETED);
  await expectAccessible(page);
  await shot(page, 'bought');
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Shop' }).click();
  await expect(page.getByTestId(`stock-${id}`)).toHaveText(String(before - 2));
  await shot(page, 'stock-fell');

  await buy(page, stack, before - 2 + 1, /Rejected: out of stock/);
  await shot(page, 'rejected-out-of-stock');
  await page.goto('/');
  await expect(page.getByTestId(`stock-${id}`)).toHaveText(String(before - 2));
});

test.describe('a region stops while shoppers buy', () => {
  const PURCHASES = 4;
  let stopped: StackNode | undefined;

  test.afterAll(async () => {
    // Whatever happened, leave the stack with every region running.
    if (stopped) await setRegion(stopped, 'start').catch(() => {});
  });

  // One test with steps, not several tests: the fleet page follows the transactions this browser
  // placed, and a test's browser context (its localStorage) ends with the test.
  test('every purchase completes, the fleet shows the region down, then it catches up', async ({ page, context, stack }) => {
    // Bounded by the worst case of its waits (five transactions and a catch-up), not the default.
    test.setTimeout(8 * transactionTimeout(stack));
    const name = process.env.SALDO_E2E_REGION ?? stack.nodes[stack.nodes.length - 1].name;
    const node = stack.nodes.find((n) => n.name === name || n.region === name);
    if (!node) throw new Error(`no node ${name} in the stack`);
    const placed: string[] = [];
    const nodeState = (p: Page) => p.getByTestId(`node-state-${node.name}`);

    // The fleet page stays open beside the shop, as in the demo.
    const fleet = await context.newPage();
    const fleetErrors: string[] = [];
    watchConsole(fleet, fleetErrors);
    await fleet.goto('/fleet');
    await expect(nodeState(fleet)).toHaveText('up');

    await page.goto('/');
    const id = await productId(page);
    const before = await stockOf(page, id);

    await test.step(`stop ${node.name} while buying`, async () => {
      // The first purchase is in flight when the region stops.
      await page.getByRole('button', { name: `Add ${PRODUCT} to cart` }).click();
      await page.goto('/cart');
      await page.getByTestId('buy').click();
      await expect(page.getByTestId('checkout-status')).toHaveAttribute('data-step', /following|done/);
      placed.push(await page.getByTestId('checkout-transaction').innerText());
      await setRegion(node, 'stop');
      stopped = node;
      await expect(page.getByTestId('checkout-status')).toContainText(COMPLETED, { timeout: transactionTimeout(stack) });

      for (let i = 1; i < PURCHASES; i++) placed.push(await buy(page, stack, 1, COMPLETED));
      await shot(page, 'bought-with-region-down');
      await page.goto('/');
      await expect(page.getByTestId(`stock-${id}`)).toHaveText(String(before - PURCHASES));
    });

    await test.step('the fleet page shows the region down and every purchase completed', async () => {
      await fleet.bringToFront();
      await expect(nodeState(fleet)).toHaveText('down', { timeout: transactionTimeout(stack) });
      for (const tx of placed) {
        await expect(fleet.getByTestId(`timeline-tx-${tx}`)).toHaveAttribute('data-status', 'completed', {
          timeout: transactionTimeout(stack),
        });
      }
      await expect(fleet.getByTestId('timeline-fleet').filter({ hasText: `${node.name} (${node.region}) went down` })).toHaveCount(1);
      const takeovers = await fleet.getByTestId('takeover').count();
      // Whether a purchase needs a takeover depends on its rendezvous ranking: a count, not an assertion.
      const note = `${takeovers} of ${PURCHASES} purchases were taken over while ${node.name} was down`;
      test.info().annotations.push({ type: 'takeovers', description: note });
      console.log(note);
      await expectAccessible(fleet);
      await shot(fleet, 'fleet-region-down');
    });

    await test.step(`start ${node.name} again and see it catch up`, async () => {
      await setRegion(node, 'start');
      stopped = undefined;
      await expect(nodeState(fleet)).toHaveText(/up|starting/, { timeout: transactionTimeout(stack) });
      // Catching up: the restarted node records every purchase it missed.
      for (const tx of placed) {
        await expect(fleet.getByTestId(`timeline-tx-${tx}`)).toContainText(`${node.name}: recorded`, {
          timeout: 2 * transactionTimeout(stack),
        });
      }
      await expect(nodeState(fleet)).toHaveText('up', { timeout: transactionTimeout(stack) });
      await expect(fleet.getByTestId('timeline-fleet').filter({ hasText: `${node.name} (${node.region}) came back up` })).toHaveCount(1);
      await shot(fleet, 'fleet-caught-up');
    });
    expect(fleetErrors, 'console errors on the fleet page').toEqual([]);
  });
});
