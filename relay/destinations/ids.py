"""The order and subscription ids the ad platforms see (Meta `event_id`/`order_id`,
GA4 `transaction_id`), the same on every retry and the ones a merchant gives the
browser pixel or gtag so the two sides deduplicate.

`order_id`: a Stripe Checkout purchase goes out as its PaymentIntent (`pi_…`,
payment mode), because that is what Stripe's refund events name, so a refund
reaches GA4 under the purchase's own `transaction_id`; a Checkout Session
without one (subscription mode) goes out as the session id (`cs_…`). Every
other conversion uses its order key: a Stripe invoice `in_…`, a Paddle
transaction `txn_…`, Lemon Squeezy `order-123`, Chargebee `invoice-42`.

`refunded_order`: the purchase a refund takes money back from, in the same
form, when the processor says which one it is.
"""

from __future__ import annotations

from relay.conversion import REFUND, SUBSCRIPTION_CANCELLED, SUBSCRIPTION_STARTED, Conversion
from relay.refunds import CUMULATIVE_REF


def order_id(conversion: Conversion) -> str:
    if conversion.source == "stripe" and conversion.order_key.startswith("cs_"):
        return conversion.refs.get("payment_intent") or conversion.order_key
    return conversion.order_key


def refunded_order(conversion: Conversion) -> str | None:
    """The refunded purchase's `order_id`, or None when the refund does not say."""
    assert conversion.kind == REFUND
    refs = conversion.refs
    if conversion.source == "stripe":
        return refs.get("payment_intent") or refs.get("charge")
    if conversion.source == "lemonsqueezy":
        return refs.get(CUMULATIVE_REF)
    if conversion.source == "paddle":
        return refs.get("transaction_id")
    if conversion.source == "chargebee" and refs.get("invoice_id"):
        return f"invoice-{refs['invoice_id']}"
    return None


def subscription_id(conversion: Conversion) -> str | None:
    """The subscription this conversion belongs to, keyed as relay keys subscriptions
    (`sub_…` for Stripe and Paddle, `subscription-{id}` for the others), so a start,
    its renewals and its cancellation all name the same one."""
    if conversion.kind in (SUBSCRIPTION_STARTED, SUBSCRIPTION_CANCELLED):
        return conversion.order_key
    raw = conversion.refs.get("subscription") or conversion.refs.get("subscription_id")
    if not raw:
        return None
    return raw if raw.startswith("sub_") else f"subscription-{raw}"
