// @vitest-environment node
// Pure logic: no DOM needed, and the node environment starts much faster than jsdom.
import { describe, expect, it } from 'vitest';
import { addToCart, cartCount, cartRows, cartSignature, emptyCart, MAX_LINES, MAX_QUANTITY, MAX_SALDO, parseCart, removeFromCart, setQuantity } from './cart';
// The API's bounds as its OpenAPI document states them; crates/api/src/contract.rs fails when this
// file and the document the API generates differ.
import apiLimits from './api-limits.json';

const orange = { id: 1, ean: 1111, name: 'Orange', saldo: 5 };
const apple = { id: 2, ean: 2222, name: 'Apple', saldo: 0 };

describe('cart arithmetic', () => {
  it('adds, counts and removes', () => {
    let c = addToCart(emptyCart, 2);
    c = addToCart(c, 1, 3);
    c = addToCart(c, 2);
    expect(c).toEqual([
      { id: 1, quantity: 3 },
      { id: 2, quantity: 2 },
    ]);
    expect(cartCount(c)).toBe(5);
    expect(removeFromCart(c, 1)).toEqual([{ id: 2, quantity: 2 }]);
  });

  it('treats zero, negative and non-numbers as removal, and truncates fractions', () => {
    const c = setQuantity(emptyCart, 1, 2);
    expect(setQuantity(c, 1, 0)).toEqual([]);
    expect(setQuantity(c, 1, -4)).toEqual([]);
    expect(setQuantity(c, 1, Number.NaN)).toEqual([]);
    expect(setQuantity(c, 1, 2.9)).toEqual([{ id: 1, quantity: 2 }]);
  });

  it('uses the limits the API enforces', () => {
    expect(MAX_LINES).toBe(apiLimits.maxLines);
    expect(MAX_QUANTITY).toBe(apiLimits.maxOrderQuantity);
    expect(MAX_SALDO).toBe(apiLimits.maxSaldo);
  });

  it('caps quantities and lines at the API limits', () => {
    expect(setQuantity(emptyCart, 1, 10 * MAX_QUANTITY)).toEqual([{ id: 1, quantity: MAX_QUANTITY }]);
    let c = emptyCart;
    for (let id = 0; id < MAX_LINES + 5; id++) c = addToCart(c, id);
    expect(c).toHaveLength(MAX_LINES);
    // A line already in a full cart can still change.
    expect(cartCount(addToCart(c, 0))).toBe(MAX_LINES + 1);
  });

  it('never mutates the cart it is given', () => {
    const c = Object.freeze(setQuantity(emptyCart, 1, 1));
    expect(() => addToCart(c, 1)).not.toThrow();
    expect(c).toEqual([{ id: 1, quantity: 1 }]);
  });

  it('joins the catalogue and says how many are missing', () => {
    const rows = cartRows(setQuantity(setQuantity(setQuantity(emptyCart, 1, 7), 2, 1), 9, 1), [orange, apple]);
    expect(rows.map((r) => [r.id, r.shortBy])).toEqual([
      [1, 2],
      [2, 1],
      [9, 1],
    ]);
    expect(rows[2].product).toBeUndefined();
  });

  it('gives equal carts equal signatures whatever the order of adding', () => {
    const a = addToCart(addToCart(emptyCart, 1), 2);
    const b = addToCart(addToCart(emptyCart, 2), 1);
    expect(cartSignature(a)).toBe(cartSignature(b));
    expect(cartSignature(addToCart(a, 1))).not.toBe(cartSignature(a));
  });

  it('reads a saved cart and drops what is malformed', () => {
    expect(parseCart(null)).toEqual([]);
    expect(parseCart('not json')).toEqual([]);
    expect(parseCart('{"id":1}')).toEqual([]);
    expect(parseCart('[{"id":2,"quantity":1},{"id":"x","quantity":1},{"id":1,"quantity":3},null]')).toEqual([
      { id: 1, quantity: 3 },
      { id: 2, quantity: 1 },
    ]);
  });
});
