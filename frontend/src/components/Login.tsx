import type { Principal } from '../api';
import { authCookie, isLoopback, localPrincipal } from '../localAuth';
import type { LocalRole } from '../localAuth';
import { hasRole, PageHeading, WAREHOUSE_ROLE } from './common';

/**
 * Where a 401 lands (staticwebapp.config.json responseOverrides). In Azure the link goes to
 * Entra ID. On the local stack (a loopback address) the page also offers a local-only sign-in
 * as a shopper or as the warehouse, since the Static Web Apps CLI's own form needs the internet.
 */
export function Login({ principal, hostname = window.location.hostname }: { principal: Principal | null; hostname?: string }) {
  const local = isLoopback(hostname);
  return (
    <>
      <PageHeading>Sign in</PageHeading>
      {principal && (
        <p data-testid="signed-in">
          You are signed in as <strong>{principal.userDetails}</strong>
          {principal.userRoles.length > 0 && <> with roles {principal.userRoles.join(', ')}</>}.{' '}
          <a href="/.auth/logout">Sign out</a>
        </p>
      )}
      {principal && !hasRole(principal, WAREHOUSE_ROLE) && (
        <p role="alert" className="error" data-testid="warehouse-refused">
          The warehouse page needs the warehouse role, which your account does not have.
        </p>
      )}
      {!principal && (
        <>
          <p>Shopping needs no account. The warehouse page needs the <strong>warehouse</strong> role.</p>
          <p>
            <a className="button" href="/.auth/login/aad?post_login_redirect_uri=/warehouse">
              Sign in with Microsoft Entra ID
            </a>
          </p>
        </>
      )}
      {local && !hasRole(principal, WAREHOUSE_ROLE) && <LocalSignIn />}
    </>
  );
}

function signInLocally(role: LocalRole) {
  document.cookie = authCookie(localPrincipal(role));
  // A full load: every page reads the principal once, from /.auth/me.
  window.location.assign(role === 'warehouse' ? '/warehouse' : '/');
}

function LocalSignIn() {
  return (
    <section className="card local-only" aria-labelledby="local-signin" data-testid="local-signin">
      <h2 id="local-signin">Local stack only: sign in without Entra ID</h2>
      <p className="muted">
        Sets the Static Web Apps CLI's sign-in cookie in this browser. Offered only when the shop is served from this machine;
        a deployment ignores such a cookie.
      </p>
      <p className="actions">
        <button type="button" onClick={() => signInLocally('shopper')} data-testid="local-signin-shopper">
          Sign in as a shopper
        </button>{' '}
        <button type="button" onClick={() => signInLocally('warehouse')} data-testid="local-signin-warehouse">
          Sign in as the warehouse
        </button>
      </p>
    </section>
  );
}
