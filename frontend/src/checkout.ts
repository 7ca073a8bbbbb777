// Checkout: placing an order exactly once, then following its transaction to an outcome.
//
// Exactly once: every checkout attempt carries an Idempotency-Key. The key is kept while the
// cart is unchanged and the order has not been accepted, so a retry (automatic, or the shopper
// pressing "Try again" after a network error, even after reloading the page) reuses it and the
// API maps it to the same transaction. A changed cart, or an accepted order, starts a new
// attempt with a new key.

import { ApiError, getTransaction, isRetryable, placeOrder } from './api';
import type { Accepted, OrderLine, Transaction } from './api';
import { cartSignature } from './cart';

export type Sleep = (ms: number, signal?: AbortSignal) => Promise<void>;

export const sleep: Sleep = (ms, signal) =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/** Where an attempt in progress is kept (sessionStorage in the page, so a reload keeps it). */
export interface KeyStore {
  load(): string | null;
  save(value: string | null): void;
}

interface Attempt {
  signature: string;
  key: string;
}

/** Remembers the key of the attempt in progress. */
export class IdempotencyKeys {
  private attempt: Attempt | null;
  private readonly newKey: () => string;
  private readonly store?: KeyStore;

  constructor(newKey: () => string = () => crypto.randomUUID(), store?: KeyStore) {
    this.newKey = newKey;
    this.store = store;
    this.attempt = IdempotencyKeys.parse(store?.load() ?? null);
  }

  private static parse(text: string | null): Attempt | null {
    try {
      const a = JSON.parse(text ?? 'null');
      return a && typeof a.signature === 'string' && typeof a.key === 'string' ? { signature: a.signature, key: a.key } : null;
    } catch {
      return null;
    }
  }

  private set(a: Attempt | null) {
    this.attempt = a;
    this.store?.save(a && JSON.stringify(a));
  }

  /** The key for ordering these lines: the pending attempt's key if the cart is unchanged. */
  keyFor(lines: readonly OrderLine[]): string {
    const signature = cartSignature(lines);
    if (this.attempt?.signature !== signature) this.set({ signature, key: this.newKey() });
    return this.attempt!.key;
  }

  /** The order was accepted: the next checkout is a new purchase. */
  settle(): void {
    this.set(null);
  }
}

/** A KeyStore in sessionStorage (per tab, survives a reload); none when storage is unavailable. */
export function sessionKeyStore(name: string): KeyStore | undefined {
  try {
    const s = window.sessionStorage;
    return {
      load: () => s.getItem(name),
      save: (v) => (v === null ? s.removeItem(name) : s.setItem(name, v)),
    };
  } catch {
    return undefined;
  }
}

/** Delays between tries: grows by half each time, capped (bounded work for the server). */
export function backoff(attempt: number, firstMs = 300, maxMs = 2000): number {
  return Math.min(maxMs, Math.round(firstMs * 1.5 ** Math.max(0, attempt)));
}

export interface SubmitOptions {
  /** Total tries, the first included (bounded: a shopper waits seconds, not minutes). */
  tries?: number;
  sleep?: Sleep;
  signal?: AbortSignal;
  place?: typeof placeOrder;
}

/**
 * Places the order, retrying answers that may succeed on a second try with the same key.
 * Throws the last error when every try failed; the key stays pending so a manual retry reuses it.
 */
export async function submitOrder(
  lines: readonly OrderLine[],
  keys: IdempotencyKeys,
  { tries = 3, sleep: wait = sleep, signal, place = placeOrder }: SubmitOptions = {},
): Promise<Accepted> {
  if (lines.length === 0) throw new ApiError(400, 'empty_cart', 'The cart is empty.');
  const key = keys.keyFor(lines);
  for (let attempt = 0; ; attempt++) {
    try {
      const accepted = await place([...lines], key, signal);
      keys.settle();
      return accepted;
    } catch (e) {
      if (!isRetryable(e) || attempt + 1 >= tries) throw e;
      await wait(backoff(attempt, 500), signal);
    }
  }
}

export interface FollowOptions {
  onUpdate?: (t: Transaction) => void;
  signal?: AbortSignal;
  sleep?: Sleep;
  now?: () => number;
  /** Give up after this long (a takeover takes seconds; this is a bound, not an expectation). */
  deadlineMs?: number;
  get?: typeof getTransaction;
}

export class StillPending extends Error {
  readonly last?: Transaction;
  constructor(last?: Transaction) {
    super('The transaction has not finished yet.');
    this.name = 'StillPending';
    this.last = last;
  }
}

/**
 * Polls a transaction until it is completed or rejected. Temporary failures and a 404 (the API
 * may answer before every node has recorded the command) are retried with backoff until the
 * deadline; any other error ends the wait.
 */
export async function followTransaction(id: string, opts: FollowOptions = {}): Promise<Transaction> {
  const { onUpdate, signal, sleep: wait = sleep, now = Date.now, deadlineMs = 120_000, get = getTransaction } = opts;
  const deadline = now() + deadlineMs;
  let last: Transaction | undefined;
  for (let attempt = 0; ; attempt++) {
    try {
      last = await get(id, signal);
      onUpdate?.(last);
      if (last.status !== 'pending') return last;
    } catch (e) {
      if (!(isRetryable(e) || (e instanceof ApiError && e.status === 404))) throw e;
    }
    if (now() >= deadline) throw new StillPending(last);
    await wait(backoff(attempt), signal);
  }
}

/** The one-line outcome the shopper reads. */
export function describeOutcome(t: Transaction): string {
  switch (t.status) {
    case 'completed':
      return `Completed by ${t.executedBy ?? 'unknown node'} in ${t.region ?? 'unknown region'}`;
    case 'rejected':
      return `Rejected: ${t.reason ?? 'no reason given'}`;
    case 'pending': {
      const received = t.nodes.filter((n) => n.recordedAt).length;
      return t.nodes.length > 0 ? `Pending (received by ${received} of ${t.nodes.length} nodes)` : 'Pending';
    }
  }
}
