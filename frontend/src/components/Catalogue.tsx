import { getProducts } from '../api';
import { addToCart, quantityOf } from '../cart';
import type { Cart } from '../cart';
import { usePolling } from '../hooks';
import { LoadError, Link, PageHeading } from './common';

export const POLL_MS = 2000;

export function Catalogue({ cart, setCart }: { cart: Cart; setCart: (f: (c: Cart) => Cart) => void }) {
  const products = usePolling(getProducts, POLL_MS);

  return (
    <>
      <PageHeading>Catalogue</PageHeading>
      <p className="muted">Stock is live: it refreshes every few seconds while this page is open.</p>
      <LoadError error={products.error} stale={products.data !== undefined} />
      {products.data === undefined ? (
        !products.error && <p role="status">Loading products…</p>
      ) : products.data.length === 0 ? (
        <p>The catalogue is empty.</p>
      ) : (
        <ul className="grid" aria-label="Products" data-testid="catalogue">
          {products.data.map((p) => {
            const inCart = quantityOf(cart, p.id);
            const canAdd = inCart < p.saldo;
            return (
              <li key={p.id} className="card" data-testid={`product-${p.id}`}>
                <h2>{p.name}</h2>
                <p className="muted">EAN {p.ean}</p>
                <p className={p.saldo > 0 ? 'stock' : 'stock out'}>
                  <span data-testid={`stock-${p.id}`}>{p.saldo}</span> in stock
                </p>
                <button
                  type="button"
                  disabled={!canAdd}
                  aria-label={`Add ${p.name} to cart`}
                  onClick={() => setCart((c) => addToCart(c, p.id))}
                >
                  {p.saldo <= 0 ? 'Out of stock' : 'Add to cart'}
                </button>
                {inCart > 0 && (
                  <p className="muted">
                    {inCart} in your <Link to="/cart">cart</Link>
                  </p>
                )}
              </li>
            );
          })}
        </ul>
      )}
    </>
  );
}
