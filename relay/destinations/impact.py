"""impact.com Conversions API: `POST {url}/Advertisers/{AccountSID}/Conversions`.

Form-encoded, HTTP Basic `AccountSID:AuthToken`, `Accept: application/json`.
Rules kept (seed + impact's OpenAPI v14, see DESTINATIONS.md §3):

- `CampaignId`, `EventTypeId`, `EventDate` (the conversion time with offset —
  never `NOW`, which would be wrong after a retry), `OrderId` ≤ 64 chars.
- An attribution key: `ClickId` (from `irclickid`) and/or `CustomerId` (the
  processor's customer id, never an email). Without either the conversion is
  skipped: impact could not attribute it.
- Money in major units, DECIMAL(12,2): numbered items (`ItemSku{n}`,
  `ItemQuantity{n}`, `ItemSubTotal{n}`) with `OrderDiscount` when items are
  known, else `OrderSubTotalPostDiscount` (net of discount, without tax and
  shipping) — never both. `CurrencyCode` always with money. `OrderTax`,
  `OrderShipping`, `OrderPromoCode` when known.
- `CustomerEmail` only as lowercase hex SHA-1 of the trimmed, lowercased email.
- A 429 carries `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
  `X-RateLimit-Reset` and no `Retry-After`: the retry waits for the reset. The
  API reference and every example give the reset as a UTC epoch second; an older
  page says "seconds until the reset", so a small number is read as that.

OrderId: the conversion's order key when it fits in 64 characters. A Stripe
Checkout Session id (`cs_live_…`, 66 characters) does not, so a session uses
its PaymentIntent id (`pi_…`, what the Stripe dashboard and refund events
show), else its invoice id (`in_…`, subscription mode), else `h-` and the first
62 hex digits of the SHA-256 of the order key. All are fixed once the
conversion is recorded, so every retry sends the same OrderId and impact's
OrderId deduplication keeps it to one action.
"""

from __future__ import annotations

import base64
import hashlib
import time
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

import httpx

from relay.conversion import Conversion
from relay.destinations import USER_AGENT, Destination, Outcome, Skip, classify, path_segment
from relay.settings import ImpactSettings

MAX_ORDER_ID = 64
MAX_CLICK_ID = 64
MAX_CUSTOMER_ID = 255
MAX_SKU = 255
DECIMAL_12_2 = Decimal("9999999999.99")
CENT = Decimal("0.01")


def order_id(conversion: Conversion) -> str:
    key = conversion.order_key
    if len(key) <= MAX_ORDER_ID:
        return key
    for ref in ("payment_intent", "invoice"):
        value = conversion.refs.get(ref)
        if value and len(value) <= MAX_ORDER_ID:
            return value
    return "h-" + hashlib.sha256(key.encode()).hexdigest()[:62]


def dec(value: Decimal) -> str:
    """DECIMAL(12,2) text: two places, half-up (3-decimal currencies lose ≤ 0.005)."""
    return format(value.quantize(CENT, rounding=ROUND_HALF_UP), "f")


EPOCH_FLOOR = 1_000_000_000  # 2001-09-09: a reset above this is a moment, below it a delay


def rate_limit_reset(response: httpx.Response) -> float | None:
    """impact's `X-RateLimit-Reset` as seconds from now; None when absent or unreadable."""
    raw = response.headers.get("x-ratelimit-reset", "").strip()
    if not raw.isdigit() or len(raw) > 12:
        return None
    value = int(raw)
    if value >= EPOCH_FLOOR:
        return max(0.0, value - time.time())
    return float(value)


def sha1_email(email: str) -> str:
    return hashlib.sha1(email.strip().lower().encode()).hexdigest()  # noqa: S324 - impact's format


class Impact(Destination):
    name = "impact"
    settings: ImpactSettings

    def build(self, conversion: Conversion, now: datetime) -> httpx.Request | Skip:
        s = self.settings
        click_id = conversion.attribution.get("irclickid")
        if click_id and len(click_id) > MAX_CLICK_ID:
            click_id = None
        customer_id = conversion.customer.id
        if customer_id and (len(customer_id) > MAX_CUSTOMER_ID or "@" in customer_id):
            customer_id = None
        if not click_id and not customer_id:
            return Skip("no attribution key: neither irclickid nor a customer id is known")
        if conversion.total is None or conversion.currency is None:
            return Skip("no order amount")
        money = [conversion.total, conversion.tax or 0, conversion.shipping or 0]
        if any(abs(Decimal(v)) > DECIMAL_12_2 for v in money):
            return Skip("amount exceeds impact's DECIMAL(12,2) fields")

        form: list[tuple[str, str]] = [
            ("CampaignId", str(s.campaign_id)),
            ("EventTypeId", str(s.event_type_id)),
            ("EventDate", conversion.occurred_at.isoformat(timespec="seconds")),
            ("OrderId", order_id(conversion)),
        ]
        if click_id:
            form.append(("ClickId", click_id))
        if customer_id:
            form.append(("CustomerId", customer_id))
        if conversion.customer.email:
            form.append(("CustomerEmail", sha1_email(conversion.customer.email)))
        if conversion.new_customer is not None:
            form.append(("CustomerStatus", "New" if conversion.new_customer else "Existing"))
        form.append(("CurrencyCode", conversion.currency))

        items = [i for i in conversion.items if i.subtotal is not None or i.price is not None]
        if items and len(items) == len(conversion.items):
            for n, item in enumerate(items, start=1):
                line = item.subtotal
                if line is None:
                    assert item.price is not None  # kept by the filter above
                    line = item.price * item.quantity
                sku = item.sku or item.product_id or item.name or f"item-{n}"
                form.append((f"ItemSku{n}", sku[:MAX_SKU]))
                if item.name:
                    form.append((f"ItemName{n}", item.name[:MAX_SKU]))
                if item.category:
                    form.append((f"ItemCategory{n}", item.category[:MAX_SKU]))
                form.append((f"ItemQuantity{n}", str(item.quantity)))
                form.append((f"ItemSubTotal{n}", dec(line)))
            if conversion.discount:
                form.append(("OrderDiscount", dec(conversion.discount)))
        else:
            net = conversion.net
            assert net is not None
            form.append(("OrderSubTotalPostDiscount", dec(max(net, Decimal(0)))))
        if conversion.tax is not None:
            form.append(("OrderTax", dec(conversion.tax)))
        if conversion.shipping is not None:
            form.append(("OrderShipping", dec(conversion.shipping)))
        if conversion.promo_code:
            form.append(("OrderPromoCode", conversion.promo_code[:64]))

        sid = s.account_sid or ""
        token = s.auth_token.get_secret_value() if s.auth_token else ""
        basic = base64.b64encode(f"{sid}:{token}".encode()).decode()
        return httpx.Request(
            "POST",
            f"{s.url.rstrip('/')}/Advertisers/{path_segment(sid)}/Conversions",
            data=dict(form),
            headers={
                "Authorization": f"Basic {basic}",
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
        )

    def classify(self, response: httpx.Response) -> Outcome:
        outcome = classify(response)
        if response.status_code == 429 and outcome.retry_after is None:
            reset = rate_limit_reset(response)
            if reset is not None:
                return Outcome(outcome.kind, outcome.detail, reset)
        return outcome
