// The one module that knows the API's wire shapes. Everything else imports these types, so a
// renamed field is a change here only. The API lives on the same origin under /api (the Static
// Web Apps CLI locally, the linked Function App in Azure); errors are {"error": {code, message}}.

export interface Product {
  id: number;
  ean: number;
  name: string;
  saldo: number;
}

export type TxStatus = 'pending' | 'completed' | 'rejected';

/** One node's view of a transaction: whether and when it recorded it. */
export interface NodeRecord {
  /** The node's name, or its URL when it did not answer (a stopped node cannot say its name). */
  node: string;
  /** The node's base URL as the API knows it (the key that matches `NodeHealth.url`). */
  url?: string;
  recordedAt?: string;
  /** `unknown`: the node answered and has not recorded it (yet). */
  state?: TxStatus | 'unknown' | 'unreachable';
  /** False when the API could not ask that node (region stopped or slow). */
  reachable: boolean;
}

export interface Transaction {
  transaction: string;
  status: TxStatus;
  reason?: string;
  executedBy?: string;
  /** Region of the executing node. */
  region?: string;
  /** True when the executor was not the first-ranked node: it took over from a silent one. */
  takeover: boolean;
  /** When the executor applied it, on the executor's clock (ISO 8601). */
  executedAt?: string;
  quantities: { id: number; saldo: number }[];
  /** The command's lines (a purchase has `change`, a warehouse update `saldo`). */
  lines?: { id: number; name: string; change?: number; saldo?: number }[];
  nodes: NodeRecord[];
}

export interface Accepted {
  transaction: string;
  status: TxStatus;
  /** The `Location` header: where the transaction's status can be read. */
  location?: string;
}

export interface NodeHealth {
  /** The node's name, or its URL while it is down and no peer has named it. */
  node: string;
  region: string;
  url: string;
  ready: boolean;
  /** True when the node itself answered the API just now. */
  up: boolean;
  lastHeartbeat?: string;
  counters: Record<string, number>;
  /** Why the node is down. */
  error?: string;
}

export interface OrderLine {
  id: number;
  quantity: number;
}

/** The Static Web Apps client principal (`/.auth/me`). */
export interface Principal {
  identityProvider: string;
  userId: string;
  userDetails: string;
  userRoles: string[];
}

/** Any failed call. `status` 0 means the request never got an answer (network, abort). */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/**
 * Whether trying the same request again may succeed: no answer at all, or the server (or a
 * proxy in front of it) said it is temporarily unable. A 4xx other than 408/429 is our fault
 * and repeats identically.
 */
export function isRetryable(err: unknown): boolean {
  if (!(err instanceof ApiError)) return false;
  return err.status === 0 || err.status === 408 || err.status === 429 || err.status >= 500;
}

/** Turns a non-2xx response into an ApiError, using the API's JSON error when there is one. */
async function errorFrom(res: Response): Promise<ApiError> {
  let code = `http_${res.status}`;
  let message = `${res.status} ${res.statusText}`.trim();
  const text = await res.text().catch(() => '');
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown } };
    if (body?.error && typeof body.error.message === 'string') {
      message = body.error.message;
      if (typeof body.error.code === 'string') code = body.error.code;
    }
  } catch {
    // Not JSON: an error page from the Static Web Apps front door (401/403 from a route rule,
    // 502 when the API is down) or from a stopped Function App (403, "This web app is
    // stopped."). The status line and the page's title are the best description we have, and
    // for a gateway error or a stopped app, say what it means.
    const title = /<title>([^<]{1,200})<\/title>/i.exec(text)?.[1].replace(/^\s*Error \d+\s*-\s*/i, '').replace(/\.\s*$/, '').trim();
    if (title) message = `${message}: ${title}`;
    if (res.status === 502 || res.status === 503 || res.status === 504 || /\bstopped\b/i.test(title ?? '')) {
      message = `The shop's API is not answering (${message}). Is the stack running?`;
    }
  }
  if (res.status === 401) message = `Sign-in required: ${message}`;
  return new ApiError(res.status, code, message);
}

/**
 * How long one call may take, answer and body together. The API bounds its own calls to the
 * nodes and the database well below this, so only a hung or unreachable stack reaches it.
 */
export const REQUEST_TIMEOUT_MS = 10_000;

/** A signal that aborts when the caller's does, or when `ms` have passed (`expired()`). */
function deadline(outer: AbortSignal | null | undefined, ms: number) {
  const ctl = new AbortController();
  let expired = false;
  const timer = setTimeout(() => {
    expired = true;
    ctl.abort(new DOMException(`no answer within ${ms} ms`, 'TimeoutError'));
  }, ms);
  const onAbort = () => ctl.abort(outer?.reason);
  if (outer?.aborted) onAbort();
  else outer?.addEventListener('abort', onAbort, { once: true });
  return {
    signal: ctl.signal,
    expired: () => expired,
    done: () => {
      clearTimeout(timer);
      outer?.removeEventListener('abort', onAbort);
    },
  };
}

async function request(path: string, init: RequestInit = {}): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(path, {
      ...init,
      headers: { Accept: 'application/json', ...(init.headers ?? {}) },
      // A role rule answering with a redirect to the login page must surface as an error,
      // not as the login page's HTML parsed as data.
      redirect: 'manual',
    });
  } catch (e) {
    if (init.signal?.aborted || (e instanceof DOMException && e.name === 'AbortError')) throw e;
    throw new ApiError(0, 'network', `The shop could not be reached (${(e as Error).message}).`);
  }
  if (res.type === 'opaqueredirect' || (res.status >= 300 && res.status < 400)) {
    throw new ApiError(401, 'login_required', 'Sign-in required.');
  }
  if (!res.ok) throw await errorFrom(res);
  return res;
}

/**
 * One call, answer and body, bounded by `timeoutMs`: a stack that does not answer becomes a
 * retryable ApiError (status 0, code `timeout`) instead of a page waiting forever. The
 * caller's own abort (a page closing) still surfaces as an abort.
 */
async function call<T>(
  path: string,
  init: RequestInit,
  read: (res: Response, signal: AbortSignal) => Promise<T>,
  timeoutMs = REQUEST_TIMEOUT_MS,
): Promise<T> {
  const d = deadline(init.signal, timeoutMs);
  try {
    return await read(await request(path, { ...init, signal: d.signal }), d.signal);
  } catch (e) {
    if (d.expired()) {
      throw new ApiError(0, 'timeout', `The shop did not answer within ${Math.round(timeoutMs / 1000)} s: the local stack may be stopped or overloaded.`);
    }
    throw e;
  } finally {
    d.done();
  }
}

async function json<T>(path: string, init: RequestInit = {}, timeoutMs?: number): Promise<T> {
  return call(
    path,
    init,
    async (res, signal) => {
      try {
        return (await res.json()) as T;
      } catch (e) {
        if (signal.aborted) throw e;
        throw new ApiError(res.status, 'bad_response', `The answer to ${path} was not JSON.`);
      }
    },
    timeoutMs,
  );
}

export function getProducts(signal?: AbortSignal): Promise<Product[]> {
  return json<Product[]>('/api/products', { signal });
}

export function getProduct(id: number, signal?: AbortSignal): Promise<Product> {
  return json<Product>(`/api/products/${encodeURIComponent(id)}`, { signal });
}

async function accepted(path: string, init: RequestInit): Promise<Accepted> {
  return call(path, init, async (res, signal) => {
    const body = (await res.json().catch((e) => {
      if (signal.aborted) throw e;
      return null;
    })) as Partial<Accepted> | null;
    if (!body || typeof body.transaction !== 'string') {
      throw new ApiError(res.status, 'bad_response', 'The shop accepted the request but named no transaction.');
    }
    return {
      transaction: body.transaction,
      status: body.status ?? 'pending',
      location: res.headers.get('Location') ?? undefined,
    };
  });
}

/** Places an order. The same `idempotencyKey` always means the same purchase (a retry never buys twice). */
export function placeOrder(lines: OrderLine[], idempotencyKey: string, signal?: AbortSignal): Promise<Accepted> {
  return accepted('/api/orders', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': idempotencyKey },
    body: JSON.stringify({ lines }),
    signal,
  });
}

/** Sets a product's quantity (role `warehouse`); the key makes a retry safe, as for orders. */
export function setSaldo(id: number, saldo: number, idempotencyKey: string, signal?: AbortSignal): Promise<Accepted> {
  return accepted(`/api/products/${encodeURIComponent(id)}`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json', 'Idempotency-Key': idempotencyKey },
    body: JSON.stringify({ saldo }),
    signal,
  });
}

/** Reads a transaction and fills in what an older or newer API may name differently. */
export async function getTransaction(id: string, signal?: AbortSignal): Promise<Transaction> {
  const raw = await json<Record<string, unknown>>(`/api/transactions/${encodeURIComponent(id)}`, { signal });
  return normalizeTransaction(raw);
}

// --- What the API sends (crates/api/src/aggregate.rs), mapped onto the types above. Optional
// fields are read defensively so that a field the API adds or drops does not break the page.

interface WireNodeRecord {
  url?: string;
  node?: string;
  region?: string;
  state?: NodeRecord['state'];
  recordedAt?: string;
  reachable?: boolean;
}

export function normalizeTransaction(raw: Record<string, unknown>): Transaction {
  const t = raw as Partial<Omit<Transaction, 'nodes'>> & { executedRegion?: string; nodes?: WireNodeRecord[] };
  const status = t.status;
  if (typeof t.transaction !== 'string' || (status !== 'pending' && status !== 'completed' && status !== 'rejected')) {
    throw new ApiError(200, 'bad_response', 'The transaction status had an unexpected shape.');
  }
  const nodes = (Array.isArray(t.nodes) ? t.nodes : []).map(
    (n): NodeRecord => ({
      node: n.node ?? n.url ?? 'unknown node',
      url: n.url,
      recordedAt: n.recordedAt,
      state: n.state,
      reachable: n.reachable ?? n.state !== 'unreachable',
    }),
  );
  return {
    transaction: t.transaction,
    status,
    reason: t.reason,
    executedBy: t.executedBy,
    region: t.executedRegion ?? t.region,
    takeover: t.takeover ?? false,
    executedAt: typeof t.executedAt === 'string' ? t.executedAt : undefined,
    quantities: Array.isArray(t.quantities) ? t.quantities : [],
    lines: Array.isArray(t.lines) ? t.lines : [],
    nodes,
  };
}

interface WireNodeHealth {
  url: string;
  up?: boolean;
  node?: string;
  region?: string;
  ready?: boolean;
  lastHeartbeat?: string;
  counters?: Record<string, number>;
  error?: string;
}

export function normalizeNodes(raw: unknown): NodeHealth[] {
  // `{checkedAt, nodes: [...]}`; a bare array is accepted too.
  const list = Array.isArray(raw) ? raw : (raw as { nodes?: unknown } | null)?.nodes;
  if (!Array.isArray(list)) throw new ApiError(200, 'bad_response', 'The fleet had an unexpected shape.');
  return (list as WireNodeHealth[]).map((n) => ({
    node: n.node ?? n.url,
    region: n.region ?? 'unknown region',
    url: n.url,
    ready: n.ready ?? false,
    up: n.up ?? false,
    lastHeartbeat: n.lastHeartbeat,
    counters: n.counters ?? {},
    error: n.error,
  }));
}

/** The fleet's newest transactions, whoever placed them (`GET /api/transactions`). */
export async function getRecentTransactions(limit: number, signal?: AbortSignal): Promise<Transaction[]> {
  const raw = await json<{ transactions?: Record<string, unknown>[] }>(`/api/transactions?limit=${limit}`, { signal });
  return (Array.isArray(raw.transactions) ? raw.transactions : []).map(normalizeTransaction);
}

export async function getNodes(signal?: AbortSignal): Promise<NodeHealth[]> {
  return normalizeNodes(await json<unknown>('/api/nodes', { signal }));
}

/** The fleet, with the API's time of asking (epoch ms; undefined if the API did not say). */
export async function getFleet(signal?: AbortSignal): Promise<{ checkedAt?: number; nodes: NodeHealth[] }> {
  const raw = await json<unknown>('/api/nodes', { signal });
  const at = Date.parse(String((raw as { checkedAt?: unknown } | null)?.checkedAt ?? ''));
  return { checkedAt: Number.isNaN(at) ? undefined : at, nodes: normalizeNodes(raw) };
}
/** Who is signed in, from the Static Web Apps auth endpoint; null for an anonymous visitor. */
export async function getPrincipal(signal?: AbortSignal): Promise<Principal | null> {
  const body = await json<{ clientPrincipal: Principal | null }>('/.auth/me', { signal });
  const p = body.clientPrincipal;
  if (!p) return null;
  return { ...p, userRoles: Array.isArray(p.userRoles) ? p.userRoles : [] };
}
