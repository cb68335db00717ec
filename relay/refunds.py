"""Cumulative refunds: turning "refunded so far" into "refunded by this event".

Lemon Squeezy reports only an object's *cumulative* `refunded_amount` (partial
refunds of 10 then 5 arrive as 10, then 15). Sources are pure (no ledger), so
such a source emits a refund Conversion that says so:

- `refs[CUMULATIVE_REF]` names the refunded object, e.g. "order-123";
- `total` is the cumulative refunded amount;
- `order_key` is `"{object}:refund:{cumulative in minor units}"` (see
  `cumulative_key`), so a replay is a duplicate and each new cumulative amount
  is a new key.

The store turns it into the amount refunded by this event when it records it,
in the same transaction as the insert:

    prefix = refunds.earlier_prefix(conversion)   # None: not cumulative, record as is
    if prefix is not None and the (source, kind, order_key) row does not exist yet:
        earlier = [row.total for the conversions WHERE source = conversion.source
                   AND kind = 'refund' AND order_key starts with prefix]
        conversion = refunds.refund_delta(conversion, earlier)
        # None: nothing new was refunded (a replayed or out-of-order smaller
        # cumulative amount): record no conversion and no delivery for it.

The earlier rows hold deltas already, and their sum is the largest cumulative
amount recorded so far, so out-of-order deliveries never count money twice.
Two processes must not compute a delta for the same object at once: PostgreSQL
needs a lock on the prefix for the transaction (e.g.
`pg_advisory_xact_lock(hashtextextended(source || ':' || prefix, 0))`); the
SQLite store's single writer already serializes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from relay.conversion import REFUND, REVENUE_KINDS, Conversion
from relay.money import fmt

CUMULATIVE_REF = "cumulative_refund_of"  # refs key: the object whose cumulative refund `total` is
CUMULATIVE_TOTAL_REF = "cumulative_refunded"  # refs key set by refund_delta: the cumulative amount


def cumulative_key(refunded_of: str, cumulative_minor: int) -> str:
    """The order key of a cumulative refund conversion: "order-123:refund:1500"."""
    return f"{_prefix(refunded_of)}{cumulative_minor}"


def _prefix(refunded_of: str) -> str:
    return f"{refunded_of}:refund:"


def earlier_prefix(conversion: Conversion) -> str | None:
    """The order-key prefix shared by every refund of the same object ("order-123:refund:"),
    or None when the conversion is not a cumulative refund."""
    refunded_of = conversion.refs.get(CUMULATIVE_REF)
    if conversion.kind != REFUND or not refunded_of:
        return None
    return _prefix(refunded_of)


def refund_delta(conversion: Conversion, earlier_totals: Iterable[Decimal]) -> Conversion | None:
    """The conversion with `total` = cumulative amount − refunds already recorded for the object.

    `earlier_totals` are the `total`s of the refund conversions already recorded
    with the same `earlier_prefix` (deltas themselves). Returns the conversion
    unchanged when it is not a cumulative refund, and None when nothing new was
    refunded (the delta is zero or negative).
    """
    if earlier_prefix(conversion) is None:
        return conversion
    cumulative = conversion.total
    if cumulative is None:
        raise ValueError("a cumulative refund conversion must carry its cumulative total")
    delta = cumulative - sum(earlier_totals, Decimal(0))
    if delta <= 0:
        return None
    return conversion.replace(
        total=delta,
        subtotal=None,
        tax=None,
        discount=None,
        shipping=None,
        refs={**conversion.refs, CUMULATIVE_TOTAL_REF: fmt(cumulative)},
    )


# ---------------------------------------------------------------- refund → purchase
#
# A refund names the money it gives back in the processor's own terms; the purchase or
# renewal that took that money is found through one value both carry, the *link*
# (the `link_ref` column of the conversions table, indexed with the source):
#
#   source        purchase / renewal             refund
#   stripe        refs.payment_intent            refs.payment_intent
#   lemonsqueezy  its order key (order-5,        refs.cumulative_refund_of
#                 subscription-invoice-7)
#   paddle        its order key (txn_…)          refs.transaction_id
#   chargebee     refs.invoice_id                refs.invoice_id
#
# A Stripe subscription's first payment is recorded from its Checkout Session, which
# names the invoice but no PaymentIntent (Stripe refunds name no invoice): such a
# refund finds no purchase and is skipped with that reason.


def link_ref(conversion: Conversion) -> str | None:
    """The value a refund and the purchase or renewal it refunds share, or None."""
    refs = conversion.refs
    source = conversion.source
    if conversion.kind in REVENUE_KINDS:
        if source == "stripe":
            value = refs.get("payment_intent")
        elif source in ("lemonsqueezy", "paddle"):
            value = conversion.order_key
        elif source == "chargebee":
            value = refs.get("invoice_id")
        else:
            value = None
    elif conversion.kind == REFUND:
        if source == "stripe":
            value = refs.get("payment_intent")
        elif source == "lemonsqueezy":
            value = refs.get(CUMULATIVE_REF)
        elif source == "paddle":
            txn = refs.get("transaction_id")
            value = txn if not txn or txn.startswith("txn_") else f"transaction-{txn}"
        elif source == "chargebee":
            value = refs.get("invoice_id")
        else:
            value = None
    else:
        value = None
    return value[:200] if value else None
