// What the browser tests know about the stack under test, and the helpers they share.

import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import AxeBuilder from '@axe-core/playwright';
import { test as base, expect } from '@playwright/test';
import type { BrowserContext, Locator, Page } from '@playwright/test';

const here = dirname(fileURLToPath(import.meta.url));
export const ARTIFACTS = resolve(here, 'artifacts');

/** The parts of `.saldo/stack.json` (ARCHITECTURE.md) these tests use. */
export interface StackNode {
  name: string;
  region: string;
  url: string;
  functionKey: string;
  masterKey: string;
}
export interface Stack {
  spa: { url: string };
  /** The API's Function App; `masterKey` stops and starts it as a region's (absent in the mock). */
  api: { url: string; masterKey?: string };
  nodes: StackNode[];
  /** Optional timing hints (the mock writes them; `saldo up` may). */
  config?: { takeoverMs?: number; livenessMs?: number };
}

export function stackPath(): string {
  return resolve(here, process.env.SALDO_STACK ?? '../../.saldo/stack.json');
}

export function loadStack(): Stack {
  const stack = JSON.parse(readFileSync(stackPath(), 'utf8')) as Stack;
  if (!stack.spa?.url || !Array.isArray(stack.nodes) || stack.nodes.length < 2) {
    throw new Error(`${stackPath()} lacks spa.url or at least two nodes`);
  }
  return stack;
}

/**
 * How long a transaction may take to finish: a takeover waits for the first-ranked node's
 * deadline, and the stand-ins are slow on a loaded 2-core machine. A bound, not an expectation.
 */
export function transactionTimeout(stack: Stack): number {
  const fromEnv = Number(process.env.SALDO_E2E_TX_TIMEOUT_MS);
  if (fromEnv > 0) return fromEnv;
  const takeover = stack.config?.takeoverMs ?? 10_000;
  return Math.max(45_000, 4 * takeover + 20_000);
}

// --- Signing in: the SWA CLI reads the principal from this cookie, as Azure reads its own.

export interface Principal {
  identityProvider: string;
  userId: string;
  userDetails: string;
  userRoles: string[];
  claims: unknown[];
}

export const WAREHOUSE: Principal = {
  identityProvider: 'aad',
  userId: 'e2e-warehouse',
  userDetails: 'wendy@warehouse.example',
  userRoles: ['anonymous', 'authenticated', 'warehouse'],
  claims: [],
};

export const SHOPPER: Principal = {
  identityProvider: 'aad',
  userId: 'e2e-shopper',
  userDetails: 'sam@shopper.example',
  userRoles: ['anonymous', 'authenticated'],
  claims: [],
};

export async function signIn(context: BrowserContext, spaUrl: string, who: Principal): Promise<void> {
  const value = Buffer.from(JSON.stringify(who)).toString('base64');
  await context.addCookies([{ name: 'StaticWebAppsAuthCookie', value, url: spaUrl }]);
}

// --- Regions: the Functions host stand-in's control endpoints, as `saldo region stop|start` uses them.

export async function setRegion(node: StackNode, action: 'stop' | 'start'): Promise<void> {
  const res = await fetch(`${node.url}/admin/host/${action}`, {
    method: 'POST',
    headers: { 'x-functions-key': node.masterKey },
    signal: AbortSignal.timeout(15_000),
  });
  if (!res.ok) throw new Error(`${action} ${node.name}: ${res.status} ${await res.text()}`);
}

/** Stops or starts the API's Function App (`POST <api>/admin/host/stop|start`), as Azure would. */
export async function setApi(stack: Stack, action: 'stop' | 'start'): Promise<void> {
  if (!stack.api.masterKey) throw new Error('the stack manifest has no api.masterKey');
  const res = await fetch(`${stack.api.url}/admin/host/${action}`, {
    method: 'POST',
    headers: { 'x-functions-key': stack.api.masterKey },
    signal: AbortSignal.timeout(15_000),
  });
  if (!res.ok) throw new Error(`${action} the API: ${res.status} ${await res.text()}`);
}

// --- Screenshots of every step, numbered in the order taken.

let shots = 0;
export async function shot(page: Page, name: string): Promise<void> {
  shots += 1;
  const file = resolve(ARTIFACTS, `${String(shots).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
}

/** A screenshot of one part of the page (the charts, say), numbered with the others. */
export async function shotOf(part: Locator, name: string): Promise<void> {
  shots += 1;
  await part.screenshot({ path: resolve(ARTIFACTS, `${String(shots).padStart(2, '0')}-${name}.png`) });
}

// --- Accessibility: axe-core's WCAG 2.1 A and AA rules on the page as it is now.

export async function expectAccessible(page: Page): Promise<void> {
  const { violations } = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']).analyze();
  const summary = violations.map((v) => `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
  expect(summary, `accessibility violations on ${page.url()}`).toEqual([]);
}

// --- A `page` that fails its test on any console error or uncaught exception.

export const test = base.extend<{ stack: Stack; consoleErrors: string[] }>({
  stack: async ({}, use) => {
    await use(loadStack());
  },
  consoleErrors: async ({}, use) => {
    await use([]);
  },
  baseURL: async ({}, use) => {
    await use(loadStack().spa.url);
  },
  page: async ({ page, consoleErrors }, use) => {
    watchConsole(page, consoleErrors);
    await use(page);
    expect(consoleErrors, 'console errors on the page').toEqual([]);
  },
});

/** Records console errors and page errors of `page` into `into`. */
export function watchConsole(page: Page, into: string[]): void {
  page.on('console', (m) => {
    if (m.type() === 'error') into.push(`${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => into.push(`uncaught: ${e.message}`));
}

export { expect };
