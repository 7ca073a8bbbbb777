import { defineConfig } from '@playwright/test';

// Browser tests of the shop against a running stack (`saldo up`, or the mock stack with
// SALDO_E2E_MOCK=1). Browsers cannot be downloaded here, so Debian's Chromium is used
// (`apt-get install chromium`); override with SALDO_CHROMIUM.
export default defineConfig({
  testDir: './specs',
  // One stack, one shared warehouse: the scenarios build on each other and must not interleave.
  fullyParallel: false,
  workers: 1,
  retries: 0,
  // Per test; a scenario waits for takeovers (seconds each) and a region's catch-up.
  timeout: 180_000,
  expect: { timeout: 15_000 },
  globalSetup: './global-setup.ts',
  outputDir: './test-results',
  reporter: [['list'], ['html', { outputFolder: 'playwright-report', open: 'never' }]],
  use: {
    browserName: 'chromium',
    headless: true,
    actionTimeout: 15_000,
    navigationTimeout: 30_000,
    trace: 'retain-on-failure',
    screenshot: 'only-on-failure',
    launchOptions: {
      executablePath: process.env.SALDO_CHROMIUM ?? '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
});
