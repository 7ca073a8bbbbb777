// Starts the mock API (mock-api.mjs) behind the real Static Web Apps CLI serving the built SPA,
// and writes a stack manifest shaped like `.saldo/stack.json`. Used by the browser tests with
// SALDO_E2E_MOCK=1 (see global-setup.ts) and, run alone, for trying the SPA by hand:
//   node mock-stack.mjs [manifest-path]     (Ctrl+C stops it)
//
// How the SWA CLI is started here is how `saldo up` should start it:
//   swa start <frontend/dist> --swa-config-location <frontend/dist> \
//     --api-devserver-url <api url> --host 127.0.0.1 --port <free port>
// with NO_UPDATE_NOTIFIER=1, stdin from /dev/null (a taken port makes it ask a question), in its
// own process group (it starts a child server that outlives a killed parent), and readiness =
// GET <spa url>/ answering 200 (about 5 s on a loaded 2-core machine).

import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createMockApi } from './mock-api.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const dist = resolve(here, '../../frontend/dist');

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

async function waitFor(url, ms, child) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`swa exited with ${child.exitCode} before ${url} answered`);
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${url} did not answer within ${ms} ms`);
}

/** Starts everything; resolves to {manifest, stop()}. */
export async function startMockStack(manifestPath, { takeoverMs = 2500 } = {}) {
  const api = createMockApi({ takeoverMs });
  const apiUrl = await api.listen(0);
  const port = await freePort();
  const swaBin = resolve(here, 'node_modules/.bin/swa');
  const args = ['start', dist, '--swa-config-location', dist, '--api-devserver-url', apiUrl, '--host', '127.0.0.1', '--port', String(port)];
  const log = [];
  const child = spawn(swaBin, args, {
    cwd: here,
    env: { ...process.env, NO_UPDATE_NOTIFIER: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // own process group, so stop() ends the server it spawns too
  });
  const keep = (d) => {
    log.push(d.toString());
    if (log.length > 200) log.shift();
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const spaUrl = `http://127.0.0.1:${port}`;
  const stop = async () => {
    try {
      process.kill(-child.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    await api.close();
  };
  try {
    const started = Date.now();
    await waitFor(`${spaUrl}/`, 60_000, child);
    console.log(`mock stack: SWA CLI answered after ${Date.now() - started} ms at ${spaUrl}`);
  } catch (e) {
    await stop();
    throw new Error(`${e.message}\n${log.join('')}`);
  }
  const manifest = {
    mock: true,
    api: { url: apiUrl, masterKey: api.masterKey },
    nodes: api.nodes(),
    spa: { url: spaUrl },
    config: { takeoverMs },
  };
  mkdirSync(dirname(manifestPath), { recursive: true });
  writeFileSync(manifestPath, JSON.stringify(manifest, null, 2));
  return { manifest, stop };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const path = resolve(process.argv[2] ?? resolve(here, 'artifacts/mock-stack.json'));
  const { manifest, stop } = await startMockStack(path);
  console.log(`shop: ${manifest.spa.url}  (manifest ${path})`);
  const end = async () => {
    await stop();
    process.exit(0);
  };
  process.on('SIGINT', end);
  process.on('SIGTERM', end);
}
