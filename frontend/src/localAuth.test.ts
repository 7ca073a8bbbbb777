// @vitest-environment node
import { describe, expect, it } from 'vitest';
import { authCookie, isLoopback, localPrincipal } from './localAuth';

describe('local sign-in', () => {
  it('makes the cookie the SWA CLI reads: base64 JSON of the client principal', () => {
    const cookie = authCookie(localPrincipal('warehouse'));
    const [pair, ...attrs] = cookie.split('; ');
    const [name, value] = pair.split('=');
    expect(name).toBe('StaticWebAppsAuthCookie');
    expect(JSON.parse(atob(value))).toMatchObject({ identityProvider: 'aad', userRoles: ['anonymous', 'authenticated', 'warehouse'] });
    expect(attrs).toContain('path=/');
    expect(localPrincipal('shopper').userRoles).not.toContain('warehouse');
  });

  it('is offered on loopback addresses only', () => {
    for (const h of ['localhost', '127.0.0.1', '127.3.0.7', '[::1]', 'shop.localhost']) expect(isLoopback(h), h).toBe(true);
    for (const h of ['saldo.azurestaticapps.net', '10.0.0.1', '127.0.0.1.example.com', 'localhost.evil.com']) expect(isLoopback(h), h).toBe(false);
  });
});
