import { defineConfig } from 'vitest/config';
import react from '@vitejs/plugin-react';

// `npm run dev` proxies /api and /.auth to a running API (default: the e2e mock,
// `node ../tests/e2e/mock-api.mjs`), so the SPA sees the same origin it sees behind the SWA CLI.
const backend = process.env.SALDO_DEV_BACKEND ?? 'http://127.0.0.1:7071';

export default defineConfig({
  plugins: [react()],
  server: { proxy: { '/api': backend, '/.auth': backend } },
  build: { target: 'es2022', sourcemap: true },
  test: {
    environment: 'jsdom',
    setupFiles: ['./src/test-setup.ts'],
    include: ['src/**/*.test.{ts,tsx}'],
  },
});
