import type { Principal } from '../api';
import { hasRole, PageHeading, WAREHOUSE_ROLE } from './common';

/**
 * Where a 401 lands (staticwebapp.config.json responseOverrides). In Azure the links go to
 * Entra ID; locally the Static Web Apps CLI serves its own sign-in form at the same address.
 */
export function Login({ principal }: { principal: Principal | null }) {
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
    </>
  );
}
