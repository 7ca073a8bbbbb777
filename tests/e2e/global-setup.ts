import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { ARTIFACTS, loadStack, stackPath } from './stack';

/**
 * With SALDO_E2E_MOCK=1 the suite starts its own mock stack (mock-stack.mjs: the mock API behind
 * the real SWA CLI); otherwise it needs a running stack (`saldo up`) and its manifest.
 */
export default async function globalSetup() {
  rmSync(ARTIFACTS, { recursive: true, force: true });
  mkdirSync(ARTIFACTS, { recursive: true });
  if (process.env.SALDO_E2E_MOCK === '1') {
    // @ts-expect-error: a plain ES module without types
    const { startMockStack } = await import('./mock-stack.mjs');
    const path = resolve(ARTIFACTS, 'mock-stack.json');
    const { stop } = await startMockStack(path);
    process.env.SALDO_STACK = path; // the test workers inherit it
    return stop;
  }
  const path = stackPath();
  if (!existsSync(path)) {
    throw new Error(`No stack manifest at ${path}: start the stack (target/debug/saldo up --detach), set SALDO_STACK, or run with SALDO_E2E_MOCK=1.`);
  }
  const stack = loadStack();
  const res = await fetch(`${stack.spa.url}/`).catch((e: Error) => e);
  if (res instanceof Error || !res.ok) {
    throw new Error(`The shop at ${stack.spa.url} (from ${path}) does not answer: ${res instanceof Error ? res.message : res.status}`);
  }
  return undefined;
}
