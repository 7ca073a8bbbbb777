import { useEffect, useRef, useState } from 'react';
import { getProducts } from '../api';
import type { Product, Transaction } from '../api';
import { cartRows, emptyCart, MAX_QUANTITY, removeFromCart, setQuantity } from '../cart';
import type { Cart } from '../cart';
import { describeOutcome, followTransaction, IdempotencyKeys, sessionKeyStore, StillPending, submitOrder } from '../checkout';
import { usePolling } from '../hooks';
import type { RecentTx } from '../timeline';
import { LoadError, Link, PageHeading } from './common';
import { POLL_MS } from './Catalogue';

type Checkout =
  | { step: 'idle' }
  | { step: 'submitting' }
  | { step: 'failed'; message: string }
  | { step: 'following'; id: string; summary: string; last?: Transaction }
  | { step: 'done'; id: string; summary: string; tx: Transaction }
  | { step: 'stuck'; id: string; summary: string; message: string };

export function summarize(cart: Cart, products: readonly Product[] | undefined): string {
  const names = new Map((products ?? []).map((p) => [p.id, p.name]));
  return cart.map((l) => `${l.quantity} × ${names.get(l.id) ?? `product ${l.id}`}`).join(', ');
}

export function CartPage({
  cart,
  setCart,
  onPlaced,
}: {
  cart: Cart;
  setCart: (f: (c: Cart) => Cart) => void;
  onPlaced: (tx: RecentTx) => void;
}) {
  const products = usePolling(getProducts, POLL_MS);
  const keys = useRef<IdempotencyKeys | null>(null);
  keys.current ??= new IdempotencyKeys(undefined, sessionKeyStore('saldo.checkout'));
  const [checkout, setCheckout] = useState<Checkout>({ step: 'idle' });
  const abort = useRef<AbortController | null>(null);
  useEffect(() => () => abort.current?.abort(), []);

  const rows = cartRows(cart, products.data ?? []);
  const busy = checkout.step === 'submitting' || checkout.step === 'following';

  async function follow(id: string, summary: string, signal: AbortSignal) {
    setCheckout({ step: 'following', id, summary });
    try {
      const tx = await followTransaction(id, {
        signal,
        onUpdate: (last) => setCheckout({ step: 'following', id, summary, last }),
      });
      setCheckout({ step: 'done', id, summary, tx });
      products.refresh();
    } catch (e) {
      if (signal.aborted) return;
      const message =
        e instanceof StillPending
          ? 'No node has finished it yet. It will complete once a node does; see the Fleet page.'
          : (e as Error).message;
      setCheckout({ step: 'stuck', id, summary, message });
    }
  }

  async function buy() {
    abort.current?.abort();
    const ctl = new AbortController();
    abort.current = ctl;
    const lines = cart;
    const summary = summarize(lines, products.data);
    setCheckout({ step: 'submitting' });
    try {
      const accepted = await submitOrder(lines, keys.current!, { signal: ctl.signal });
      // Accepted: the purchase exists now, whatever happens to this page. Empty the cart so a
      // second press is a new purchase (with a new key), and remember it for the fleet page.
      setCart(() => emptyCart);
      onPlaced({ id: accepted.transaction, kind: 'order', at: Date.now(), summary });
      await follow(accepted.transaction, summary, ctl.signal);
    } catch (e) {
      if (ctl.signal.aborted) return;
      // The key stays pending: pressing "Try again" with this cart reuses it.
      setCheckout({ step: 'failed', message: (e as Error).message });
    }
  }

  return (
    <>
      <PageHeading>Your cart</PageHeading>
      <LoadError error={products.error} stale={products.data !== undefined} />
      {rows.length === 0 ? (
        checkout.step === 'idle' && (
          <p>
            Your cart is empty. <Link to="/">Browse the catalogue</Link>.
          </p>
        )
      ) : (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            if (!busy) void buy();
          }}
        >
          <table className="table" data-testid="cart">
            <caption className="sr-only">Products in your cart</caption>
            <thead>
              <tr>
                <th scope="col">Product</th>
                <th scope="col">In stock</th>
                <th scope="col">Quantity</th>
                <th scope="col">
                  <span className="sr-only">Remove</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {rows.map((r) => {
                const name = r.product?.name ?? `Product ${r.id}`;
                const inputId = `qty-${r.id}`;
                return (
                  <tr key={r.id}>
                    <th scope="row">
                      <label htmlFor={inputId}>{name}</label>
                      {/* Judged only once the catalogue has loaded: before, nothing is known. */}
                      {products.data !== undefined && r.shortBy > 0 && (
                        <span className="warn" data-testid={`short-${r.id}`}>
                          {' '}
                          {r.product ? `only ${Math.max(0, r.product.saldo)} in stock` : 'no longer sold'}
                        </span>
                      )}
                    </th>
                    <td data-label="In stock">{r.product?.saldo ?? '—'}</td>
                    <td>
                      <input
                        id={inputId}
                        type="number"
                        inputMode="numeric"
                        min={1}
                        max={MAX_QUANTITY}
                        value={r.quantity}
                        disabled={busy}
                        onChange={(e) => {
                          const q = e.currentTarget.valueAsNumber;
                          if (Number.isFinite(q) && q >= 1) setCart((c) => setQuantity(c, r.id, q));
                        }}
                      />
                    </td>
                    <td>
                      <button
                        type="button"
                        className="secondary"
                        disabled={busy}
                        aria-label={`Remove ${name}`}
                        onClick={() => setCart((c) => removeFromCart(c, r.id))}
                      >
                        Remove
                      </button>
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
          <button type="submit" disabled={busy} data-testid="buy">
            {checkout.step === 'failed' ? 'Try again' : 'Buy'}
          </button>
        </form>
      )}
      <CheckoutStatus checkout={checkout} />
    </>
  );
}

function CheckoutStatus({ checkout }: { checkout: Checkout }) {
  let text: string | null = null;
  let tone = '';
  switch (checkout.step) {
    case 'idle':
      break;
    case 'submitting':
      text = 'Placing your order…';
      break;
    case 'failed':
      text = `Your order was not placed: ${checkout.message}`;
      tone = 'error';
      break;
    case 'following':
      text = checkout.last ? describeOutcome(checkout.last) : 'Order accepted, waiting for a node…';
      break;
    case 'done':
      text = describeOutcome(checkout.tx);
      tone = checkout.tx.status === 'completed' ? 'ok' : 'error';
      break;
    case 'stuck':
      text = `Still pending: ${checkout.message}`;
      tone = 'warn';
      break;
  }
  // The region is always in the DOM so that screen readers announce changes to it.
  return (
    <div role="status" aria-live="polite" className={`status ${tone && `tone-${tone}`}`} data-testid="checkout-status" data-step={checkout.step}>
      {text && <p>{text}</p>}
      {'id' in checkout && (
        <p className="muted">
          {checkout.summary} · transaction <code data-testid="checkout-transaction">{checkout.id}</code>
        </p>
      )}
      {checkout.step === 'done' && (
        <p>
          <Link to="/">Continue shopping</Link> · <Link to="/fleet">See it on the fleet page</Link>
        </p>
      )}
    </div>
  );
}
