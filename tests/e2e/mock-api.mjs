// A stand-in for Saldo's API and its three worker nodes, for developing the SPA and its browser
// tests without the Rust stack. It speaks the same routes and JSON shapes (see
// frontend/src/api.ts) and imitates the behaviour the demo shows: one node executes each
// transaction, a silent first-ranked node is taken over after a deadline, and a stopped node
// catches up when started again. It is a test double, not a model of the real algorithm.
//
// Node control mimics the Functions host stand-in: POST <node url>/admin/host/stop|start with
// `x-functions-key: <masterKey>`; the node urls are `<base>/nodes/<name>`.
//
// Run alone: `node mock-api.mjs [--port 7071]` (prints its base URL).

import { createServer } from 'node:http';
import { randomUUID, createHash } from 'node:crypto';

const REGIONS = ['westeurope', 'northeurope', 'swedencentral'];
const MAX_LINES = 100;
const MAX_ORDER_QUANTITY = 1_000; // per order line, as crates/api/src/commands.rs
const MAX_SALDO = 1_000_000;

export function createMockApi({ executeMs = 400, takeoverMs = 2500, recordStepMs = 150, masterKey = randomUUID() } = {}) {
  const products = new Map(
    [
      { id: 1, ean: 1111, name: 'Orange', saldo: 50 },
      { id: 2, ean: 2222, name: 'Apple', saldo: 40 },
      { id: 3, ean: 3333, name: 'Banana', saldo: 30 },
      { id: 4, ean: 4444, name: 'Coffee', saldo: 20 },
      { id: 5, ean: 5555, name: 'Milk', saldo: 3 },
    ].map((p) => [p.id, p]),
  );
  const counters = () => ({ received: 0, duplicates: 0, executed: 0, takenOver: 0, rejected: 0, peersRecorded: 0, catchUpRepairs: 0, publishRetries: 0 });
  const nodes = REGIONS.map((r) => ({ node: r, region: r, up: true, lastHeartbeat: Date.now(), counters: counters() }));
  const byName = new Map(nodes.map((n) => [n.node, n]));
  /** id → {id, created, lines|set, status, reason, executedBy, takeover, quantities, records: Map node → ms} */
  const txs = new Map();
  const keys = new Map(); // idempotency key → {hash, id}

  // Rendezvous ranking, as the workers do: every transaction has its own order of nodes.
  const rank = (id) =>
    [...nodes].sort((a, b) => score(id, b.node) - score(id, a.node));
  const score = (id, node) => createHash('sha256').update(`${id}/${node}`).digest().readUInt32BE(0);

  function tick(now = Date.now()) {
    for (const n of nodes) if (n.up) n.lastHeartbeat = now;
    for (const tx of txs.values()) {
      // Delivery: each live node records the command shortly after it was published.
      nodes.forEach((n, i) => {
        if (n.up && !tx.records.has(n.node) && now >= tx.created + recordStepMs * i) {
          tx.records.set(n.node, now);
          n.counters.received++;
        }
      });
      if (tx.status !== 'pending') continue;
      const ranked = rank(tx.id);
      // The first-ranked node executes; if it is down, the next live one takes over after the deadline.
      const first = ranked[0];
      let executor = null;
      if (first.up && tx.records.has(first.node) && now >= tx.created + executeMs) executor = first;
      else if (!first.up && now >= tx.created + takeoverMs) executor = ranked.find((n) => n.up && tx.records.has(n.node)) ?? null;
      if (!executor) continue;
      execute(tx, executor, executor !== first);
    }
  }

  function execute(tx, executor, takeover) {
    const next = new Map();
    for (const l of tx.lines) {
      const p = products.get(l.id);
      const target = l.saldo !== undefined ? l.saldo : p.saldo - l.quantity;
      if (target < 0) {
        tx.status = 'rejected';
        tx.reason = `out of stock: ${p.name} (id ${p.id}) has ${p.saldo}, needs ${l.quantity}`;
        executor.counters.rejected++;
        break;
      }
      next.set(l.id, target);
    }
    if (tx.status !== 'rejected') {
      for (const [id, saldo] of next) products.get(id).saldo = saldo;
      tx.status = 'completed';
      tx.quantities = [...next].map(([id, saldo]) => ({ id, saldo }));
      executor.counters.executed++;
    }
    tx.executedBy = executor.node;
    tx.executedAt = Date.now();
    tx.takeover = takeover;
    if (takeover) executor.counters.takenOver++;
    for (const n of nodes) if (n.up && n !== executor) n.counters.peersRecorded++;
  }

  const timer = setInterval(tick, 50);
  timer.unref();

  // The shapes of crates/api/src/aggregate.rs (TransactionView, FleetView).
  function view(tx) {
    const exec = tx.executedBy ? byName.get(tx.executedBy) : undefined;
    return {
      transaction: tx.id,
      status: tx.status,
      ...(tx.reason ? { reason: tx.reason } : {}),
      ...(exec ? { executedBy: exec.node, executedRegion: exec.region, executedAt: new Date(tx.executedAt).toISOString() } : {}),
      takeover: tx.takeover ?? false,
      quantities: tx.quantities ?? [],
      lines: [],
      acceptedAt: new Date(tx.created).toISOString(),
      nodes: nodes.map((n) => {
        const url = `${baseUrl()}/nodes/${n.node}`;
        if (!n.up) return { url, state: 'unreachable', error: '403 Forbidden: This web app is stopped.' };
        if (!tx.records.has(n.node)) return { url, state: 'unknown' };
        return { url, node: n.node, state: tx.status, recordedAt: new Date(tx.records.get(n.node)).toISOString() };
      }),
    };
  }

  function publish(lines) {
    const tx = { id: randomUUID(), created: Date.now(), lines, status: 'pending', records: new Map() };
    txs.set(tx.id, tx);
    if (txs.size > 1000) txs.delete(txs.keys().next().value); // bounded, oldest first
    return tx;
  }

  const send = (res, status, body, headers = {}) => {
    res.writeHead(status, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store', ...headers });
    res.end(JSON.stringify(body));
  };
  const fail = (res, status, code, message) => send(res, status, { error: { code, message } });

  function principal(req) {
    const h = req.headers['x-ms-client-principal'];
    if (!h) return null;
    try {
      return JSON.parse(Buffer.from(h, 'base64').toString('utf8'));
    } catch {
      return null;
    }
  }

  async function body(req) {
    const chunks = [];
    let size = 0;
    for await (const c of req) {
      size += c.length;
      if (size > 64 * 1024) throw Object.assign(new Error('body too large'), { status: 413 });
      chunks.push(c);
    }
    try {
      return JSON.parse(Buffer.concat(chunks).toString('utf8') || 'null');
    } catch {
      throw Object.assign(new Error('malformed JSON'), { status: 400 });
    }
  }

  function validLines(b) {
    if (!b || !Array.isArray(b.lines) || b.lines.length === 0 || b.lines.length > MAX_LINES) return null;
    const seen = new Set();
    for (const l of b.lines) {
      if (!Number.isSafeInteger(l?.id) || !products.has(l.id) || seen.has(l.id)) return null;
      if (!Number.isSafeInteger(l.quantity) || l.quantity < 1 || l.quantity > MAX_ORDER_QUANTITY) return null;
      seen.add(l.id);
    }
    return b.lines.map((l) => ({ id: l.id, quantity: l.quantity }));
  }

  let apiStopped = false;

  async function handle(req, res) {
    const url = new URL(req.url, 'http://x');
    const path = url.pathname;
    tick();

    // The API app's own control, as the Functions host stand-in offers it: stopped, it answers
    // every request with Azure's 403 page.
    const own = path.match(/^\/admin\/host\/(stop|start)$/);
    if (own && req.method === 'POST') {
      if (req.headers['x-functions-key'] !== masterKey) return fail(res, 401, 'unauthorized', 'master key required');
      apiStopped = own[1] === 'stop';
      return send(res, 200, { state: apiStopped ? 'Stopped' : 'Running' });
    }
    if (apiStopped) {
      res.writeHead(403, { 'Content-Type': 'text/html; charset=utf-8' });
      return res.end('<!DOCTYPE html><html><head><title>Error 403 - This web app is stopped.</title></head><body><h1>Error 403 - This web app is stopped.</h1></body></html>');
    }

    // Node control, as the Functions host stand-in offers it.
    const ctl = path.match(/^\/nodes\/([^/]+)\/admin\/host\/(stop|start|status)$/);
    if (ctl) {
      const n = byName.get(ctl[1]);
      if (!n) return fail(res, 404, 'not_found', 'no such node');
      if (req.headers['x-functions-key'] !== masterKey) return fail(res, 401, 'unauthorized', 'master key required');
      if (ctl[2] === 'stop') n.up = false;
      if (ctl[2] === 'start' && !n.up) {
        n.up = true;
        // Catch-up: a node that was stopped records what it missed from its peers.
        for (const tx of txs.values()) {
          if (!tx.records.has(n.node)) {
            tx.records.set(n.node, Date.now());
            n.counters.catchUpRepairs++;
          }
        }
      }
      return send(res, 200, { state: n.up ? 'Running' : 'Stopped' });
    }
    if (path === '/.auth/me') return send(res, 200, { clientPrincipal: null });
    if (!nodes.some((n) => n.up) && path.startsWith('/api/')) return fail(res, 503, 'unavailable', 'no worker node answers');

    if (req.method === 'GET' && path === '/api/products') return send(res, 200, [...products.values()]);
    let m = path.match(/^\/api\/products\/(\d+)$/);
    if (m) {
      const p = products.get(Number(m[1]));
      if (!p) return fail(res, 404, 'not_found', `unknown product ${m[1]}`);
      if (req.method === 'GET') return send(res, 200, p);
      if (req.method === 'PUT') {
        // Re-checked here as the real API does: the front door's rule is not the only guard.
        const who = principal(req);
        if (!who) return fail(res, 401, 'unauthenticated', 'sign in with the warehouse role');
        if (!who.userRoles?.includes('warehouse')) return fail(res, 403, 'forbidden', 'the warehouse role is required');
        const b = await body(req);
        if (!Number.isSafeInteger(b?.saldo) || b.saldo < 0 || b.saldo > MAX_SALDO) return fail(res, 400, 'invalid', 'saldo must be a whole number from 0 to 1000000');
        const tx = publish([{ id: p.id, quantity: 0, saldo: b.saldo }]);
        return send(res, 202, { transaction: tx.id, status: 'pending' }, { Location: `/api/transactions/${tx.id}` });
      }
      return fail(res, 405, 'method_not_allowed', 'GET or PUT');
    }
    if (path === '/api/orders' && req.method === 'POST') {
      const key = req.headers['idempotency-key'];
      if (!key || key.length > 128) return fail(res, 400, 'idempotency_key', 'an Idempotency-Key header is required');
      const b = await body(req);
      const lines = validLines(b);
      if (!lines) return fail(res, 400, 'invalid', 'lines must name known products once each with quantities from 1 to 1000');
      const hash = JSON.stringify(lines);
      const prior = keys.get(key);
      if (prior && prior.hash !== hash) return fail(res, 422, 'idempotency_key_reused', 'this Idempotency-Key was used with a different order');
      const tx = prior ? txs.get(prior.id) : publish(lines);
      if (!prior) keys.set(key, { hash, id: tx.id });
      return send(res, 202, { transaction: tx.id, status: 'pending' }, { Location: `/api/transactions/${tx.id}` });
    }
    if (path === '/api/transactions' && req.method === 'GET') {
      const limit = Math.min(100, Math.max(1, Number(url.searchParams.get('limit') ?? 20) || 20));
      const newest = [...txs.values()].sort((a, b) => b.created - a.created).slice(0, limit);
      return send(res, 200, { transactions: newest.map(view) });
    }
    m = path.match(/^\/api\/transactions\/([^/]+)$/);
    if (m && req.method === 'GET') {
      const tx = txs.get(m[1]);
      return tx ? send(res, 200, view(tx)) : fail(res, 404, 'not_found', 'unknown transaction');
    }
    if (path === '/api/nodes' && req.method === 'GET') {
      return send(res, 200, {
        checkedAt: new Date().toISOString(),
        nodes: nodes.map((n) => ({
          url: `${baseUrl()}/nodes/${n.node}`,
          up: n.up,
          // A stopped node cannot answer; its name and heartbeat come from its peers.
          node: n.node,
          region: n.region,
          ready: n.up,
          lastHeartbeat: new Date(n.lastHeartbeat).toISOString(),
          liveForPeers: n.up ? nodes.length - 1 : 0,
          counters: n.up ? n.counters : {},
          ...(n.up ? {} : { error: '403 Forbidden: This web app is stopped.' }),
        })),
      });
    }
    return fail(res, 404, 'not_found', `no route ${req.method} ${path}`);
  }

  const server = createServer((req, res) => {
    handle(req, res).catch((e) => fail(res, e.status ?? 500, e.status ? 'invalid' : 'internal', e.message));
  });
  const baseUrl = () => `http://127.0.0.1:${server.address().port}`;

  return {
    server,
    masterKey,
    nodes: () => nodes.map((n) => ({ name: n.node, region: n.region, url: `${baseUrl()}/nodes/${n.node}`, functionKey: 'mock', masterKey })),
    listen: (port = 0) => new Promise((resolve) => server.listen(port, '127.0.0.1', () => resolve(baseUrl()))),
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const i = process.argv.indexOf('--port');
  const api = createMockApi();
  const url = await api.listen(i > 0 ? Number(process.argv[i + 1]) : 7071);
  console.log(JSON.stringify({ api: url, masterKey: api.masterKey, nodes: api.nodes() }));
}
