// The cart: pure functions over an immutable list of lines, so React state updates stay trivial
// and the arithmetic is tested without a browser.

import type { OrderLine, Product } from './api';

/** The API's limits (crates/core/src/events.rs MAX_LINES, crates/api/src/commands.rs
 * MAX_ORDER_QUANTITY): the cart never builds an order the API would refuse as absurd. */
export const MAX_LINES = 100;
export const MAX_QUANTITY = 1_000;
/** The largest quantity the warehouse may set (crates/core/src/events.rs MAX_QUANTITY). */
export const MAX_SALDO = 1_000_000;

export type Cart = readonly OrderLine[];

export const emptyCart: Cart = [];

function clamp(quantity: number): number {
  if (!Number.isFinite(quantity)) return 0;
  return Math.min(MAX_QUANTITY, Math.max(0, Math.trunc(quantity)));
}

/**
 * Sets the quantity of one product; 0 (or less) removes the line. Lines stay sorted by id so
 * that two carts with the same content are equal (and give the same idempotency signature).
 */
export function setQuantity(cart: Cart, id: number, quantity: number): Cart {
  const q = clamp(quantity);
  const others = cart.filter((l) => l.id !== id);
  if (q === 0) return others;
  if (others.length === cart.length && cart.length >= MAX_LINES) return cart; // new line, but full
  return [...others, { id, quantity: q }].sort((a, b) => a.id - b.id);
}

export function quantityOf(cart: Cart, id: number): number {
  return cart.find((l) => l.id === id)?.quantity ?? 0;
}

export function addToCart(cart: Cart, id: number, quantity = 1): Cart {
  return setQuantity(cart, id, quantityOf(cart, id) + quantity);
}

export function removeFromCart(cart: Cart, id: number): Cart {
  return setQuantity(cart, id, 0);
}

/** Items in the cart, counting quantities. */
export function cartCount(cart: Cart): number {
  return cart.reduce((n, l) => n + l.quantity, 0);
}

export interface CartRow {
  id: number;
  quantity: number;
  /** Undefined when the catalogue no longer lists the product. */
  product?: Product;
  /** How many more are wanted than the catalogue last showed in stock (0 when enough). */
  shortBy: number;
}

/** Joins the cart with the catalogue; stock may have fallen since the product was added. */
export function cartRows(cart: Cart, products: readonly Product[]): CartRow[] {
  const byId = new Map(products.map((p) => [p.id, p]));
  return cart.map((l) => {
    const product = byId.get(l.id);
    const inStock = product ? Math.max(0, product.saldo) : 0;
    return { id: l.id, quantity: l.quantity, product, shortBy: Math.max(0, l.quantity - inStock) };
  });
}

/** A canonical text of the cart's content: equal carts, equal signatures. */
export function cartSignature(cart: Cart): string {
  return [...cart]
    .sort((a, b) => a.id - b.id)
    .map((l) => `${l.id}x${l.quantity}`)
    .join(',');
}

/** Reads a cart saved by an earlier visit, dropping anything malformed rather than failing. */
export function parseCart(text: string | null): Cart {
  if (!text) return emptyCart;
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    return emptyCart;
  }
  if (!Array.isArray(raw)) return emptyCart;
  let cart: Cart = emptyCart;
  for (const l of raw.slice(0, MAX_LINES)) {
    if (l && Number.isSafeInteger(l.id) && l.id >= 0 && Number.isFinite(l.quantity)) {
      cart = setQuantity(cart, l.id, l.quantity);
    }
  }
  return cart;
}
