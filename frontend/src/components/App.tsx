import { useCallback, useEffect, useState } from 'react';
import type { ReactNode } from 'react';
import { getPrincipal } from '../api';
import type { Principal } from '../api';
import { cartCount, parseCart } from '../cart';
import { usePath, useStored } from '../hooks';
import { parseRecent, remember } from '../timeline';
import type { RecentTx } from '../timeline';
import { Catalogue } from './Catalogue';
import { hasRole, Link, PageHeading, WAREHOUSE_ROLE } from './common';
import { CartPage } from './CartPage';
import { Fleet } from './Fleet';
import { Login } from './Login';
import { Warehouse } from './Warehouse';

type AuthState = { loaded: false } | { loaded: true; principal: Principal | null; error?: string };

export function App() {
  const path = usePath();
  const [cart, setCart] = useStored('saldo.cart', parseCart);
  const [recent, setRecent] = useStored('saldo.recent', parseRecent);
  const [auth, setAuth] = useState<AuthState>({ loaded: false });

  useEffect(() => {
    const ctl = new AbortController();
    getPrincipal(ctl.signal).then(
      (principal) => setAuth({ loaded: true, principal }),
      (e: Error) => {
        if (!ctl.signal.aborted) setAuth({ loaded: true, principal: null, error: e.message });
      },
    );
    return () => ctl.abort();
  }, []);

  const onPlaced = useCallback((tx: RecentTx) => setRecent((list) => remember(list, tx)), [setRecent]);
  const forget = useCallback((ids: string[]) => setRecent((list) => list.filter((t) => !ids.includes(t.id))), [setRecent]);
  const principal = auth.loaded ? auth.principal : null;
  const isWarehouse = hasRole(principal, WAREHOUSE_ROLE);

  let page: ReactNode;
  switch (path) {
    case '/':
      page = <Catalogue cart={cart} setCart={setCart} />;
      break;
    case '/cart':
      page = <CartPage cart={cart} setCart={setCart} onPlaced={onPlaced} />;
      break;
    case '/warehouse':
      page = auth.loaded ? <Warehouse allowed={isWarehouse} signedIn={principal !== null} onPlaced={onPlaced} /> : null;
      break;
    case '/fleet':
      page = <Fleet recent={recent} forget={forget} />;
      break;
    case '/login':
      page = <Login principal={principal} />;
      break;
    default:
      page = (
        <>
          <PageHeading>Page not found</PageHeading>
          <p>
            There is no page at <code>{path}</code>. <Link to="/">Back to the shop</Link>.
          </p>
        </>
      );
  }

  const nav = [
    { to: '/', label: 'Shop' },
    { to: '/cart', label: `Cart (${cartCount(cart)})` },
    ...(isWarehouse ? [{ to: '/warehouse', label: 'Warehouse' }] : []),
    { to: '/fleet', label: 'Fleet' },
  ];

  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <Link to="/" className="brand">
          Saldo
        </Link>
        <nav aria-label="Main">
          <ul>
            {nav.map((n) => (
              <li key={n.to}>
                <Link to={n.to} aria-current={path === n.to ? 'page' : undefined}>
                  {n.label}
                </Link>
              </li>
            ))}
          </ul>
        </nav>
        <div className="who" data-testid="who">
          {principal ? (
            <>
              <span>
                {principal.userDetails}
                {isWarehouse ? ' (warehouse)' : ''}
              </span>{' '}
              <a href="/.auth/logout">Sign out</a>
            </>
          ) : (
            <Link to="/login">Sign in</Link>
          )}
        </div>
      </header>
      <main id="main">{page}</main>
    </>
  );
}
