// LOCAL ONLY. Signing in on the local stack without Entra ID: the Static Web Apps CLI reads the
// signed-in user from the `StaticWebAppsAuthCookie` cookie (base64 JSON of the client
// principal), which its own /.auth/login form sets, but that form loads jQuery from a CDN and
// does nothing offline. The Login page offers these buttons only when the shop is served from a
// loopback address. In Azure the cookie is Static Web Apps' own, encrypted one: a cookie made
// like this is ignored there, so this grants nothing in a deployment.

export const AUTH_COOKIE = 'StaticWebAppsAuthCookie';

export type LocalRole = 'shopper' | 'warehouse';

export interface LocalPrincipal {
  identityProvider: string;
  userId: string;
  userDetails: string;
  userRoles: string[];
  claims: unknown[];
}

export function localPrincipal(role: LocalRole): LocalPrincipal {
  return role === 'warehouse'
    ? { identityProvider: 'aad', userId: 'local-warehouse', userDetails: 'warehouse@local.test', userRoles: ['anonymous', 'authenticated', 'warehouse'], claims: [] }
    : { identityProvider: 'aad', userId: 'local-shopper', userDetails: 'shopper@local.test', userRoles: ['anonymous', 'authenticated'], claims: [] };
}

/** The `document.cookie` assignment that signs `p` in with the SWA CLI. */
export function authCookie(p: LocalPrincipal): string {
  const value = btoa(JSON.stringify(p));
  return `${AUTH_COOKIE}=${value}; path=/; SameSite=Strict`;
}

/** Served from this machine (the local stack), as opposed to a deployment. */
export function isLoopback(hostname: string): boolean {
  const h = hostname.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}
