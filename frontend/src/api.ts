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
    // 502 when the API is down). The status line is the best description we have.
  }
  if (res.status === 401) message = `Sign-in required: ${message}`;
  return new ApiError(res.status, code, message);
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
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', `The shop could not be reached (${(e as Error).message}).`);
  }
  if (res.type === 'opaqueredirect' || (res.status >= 300 && res.status < 400)) {
    throw new ApiError(401, 'login_required', 'Sign-in required.');
  }
  if (!res.ok) throw await errorFrom(res);
  return res;
}

async function json<T>(path: string, init?: RequestInit): Promise<T> {
  const res = await request(path, init);
  try {
    return (await res.json()) as T;
  } catch {
    throw new ApiError(res.status, 'bad_response', `The answer to ${path} was not JSON.`);
  }
}

export function getProducts(signal?: AbortSignal): Promise<Product[]> {
  return json<Product[]>('/api/products', { signal });
}

export function getProduct(id: number, signal?: AbortSignal): Promise<Product> {
  return json<Product>(`/api/products/${encodeURIComponent(id)}`, { signal });
}

async function accepted(path: string, init: RequestInit): Promise<Accepted> {
  const res = await request(path, init);
  const body = (await res.json().catch(() => null)) as Partial<Accepted> | null;
  if (!body || typeof body.transaction !== 'string') {
    throw new ApiError(res.status, 'bad_response', 'The shop accepted the request but named no transaction.');
  }
  return {
    transaction: body.transaction,
    status: body.status ?? 'pending',
    location: res.headers.get('Location') ?? undefined,
  };
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
/** Who is signed in, from the Static Web Apps auth endpoint; null for an anonymous visitor. */
export async function getPrincipal(signal?: AbortSignal): Promise<Principal | null> {
  const body = await json<{ clientPrincipal: Principal | null }>('/.auth/me', { signal });
  const p = body.clientPrincipal;
  if (!p) return null;
  return { ...p, userRoles: Array.isArray(p.userRoles) ? p.userRoles : [] };
}
