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

Outcomes (docs/impact.md): a 200 is `{"Status":"QUEUED","QueuedUri":…}` — queued,
not credited. `classify` hands the QueuedUri to relay/followup.py, which asks
`GET …/APISubmissions/{BatchId}` (`submission_request`) until `read_submission`
sees `Complete`: accepted, `CONV_DUPLICATE` (impact already had the OrderId),
or rejected with impact's `ErrorType` and `ErrorReason`.

Refunds (`build_refund`): a refund of a purchase that reached impact reverses the
action in full (`DELETE …/Actions` with `DispositionCode`) or, for a partial
refund, sets its `Amount` to what remains after every refund so far (`PUT
…/Actions` with `Reason`). The action is named by `ActionTrackerId` (the event
type the purchase was sent with) and the purchase's `OrderId`, which impact's
Actions API takes instead of its own ActionId, so no look-up is needed.

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
import re
import time
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from relay.conversion import Conversion
from relay.destinations import (
    DELIVERED,
    USER_AGENT,
    Defer,
    Destination,
    Look,
    Outcome,
    Skip,
    classify,
    excerpt,
    path_segment,
    redact,
)
from relay.settings import ImpactSettings
from relay.store import (
    ACCEPTED_THERE,
    DUPLICATE_THERE,
    FAILED,
    FOLLOWING,
    PENDING,
    REJECTED_THERE,
    SKIPPED,
    RefundTarget,
)

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

    # ------------------------------------------------------------ outcomes

    follows = True
    reverses = True

    def following(self) -> bool:
        return self.settings.follow_up

    def _base(self) -> str:
        return self.settings.url.rstrip("/")

    def _headers(self) -> dict[str, str]:
        s = self.settings
        token = s.auth_token.get_secret_value() if s.auth_token else ""
        basic = base64.b64encode(f"{s.account_sid or ''}:{token}".encode()).decode()
        return {
            "Authorization": f"Basic {basic}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def classify(self, response: httpx.Response) -> Outcome:
        """The default rules, plus: a 200 QUEUED names the submission to follow; a 429
        without Retry-After waits for X-RateLimit-Reset."""
        outcome = classify(response)
        if outcome.kind == DELIVERED:
            uri = self.queued_uri(response)
            if uri is not None:
                kind = SUBMITTED.get(response.request.method, "conversion")
                return Outcome(DELIVERED, outcome.detail, follow_up=(uri, kind))
        elif response.status_code == 429 and outcome.retry_after is None:
            reset = rate_limit_reset(response)
            if reset is not None:
                return Outcome(outcome.kind, outcome.detail, reset)
        return outcome

    def queued_uri(self, response: httpx.Response) -> str | None:
        """The submission a 200 QUEUED names, as a path under this account, or None.
        Only a path of this account's APISubmissions is followed: the look carries the
        credentials, so a host or path from the answer is never taken as it is."""
        try:
            body = orjson.loads(response.content)
        except (orjson.JSONDecodeError, httpx.ResponseNotRead):
            return None
        if not isinstance(body, dict) or str(body.get("Status", "")).upper() != "QUEUED":
            return None
        queued = body.get("QueuedUri")
        if not isinstance(queued, str) or len(queued) > 500:
            return None
        prefix = f"/Advertisers/{self.settings.account_sid}/APISubmissions/"
        path = urlsplit(queued).path
        batch = path[len(prefix) :] if path.startswith(prefix) else ""
        return prefix + batch if BATCH_ID.fullmatch(batch) else None

    def rate_limit(self, response: httpx.Response) -> tuple[int, int | None, float | None] | None:
        """(X-RateLimit-Remaining, -Limit, seconds until the reset), when impact said."""
        remaining = _header_int(response, "x-ratelimit-remaining")
        if remaining is None:
            return None
        return remaining, _header_int(response, "x-ratelimit-limit"), rate_limit_reset(response)

    def submission_request(self, uri: str) -> httpx.Request:
        batch = uri.rsplit("/", 1)[-1]
        sid = path_segment(self.settings.account_sid or "")
        return httpx.Request(
            "GET",
            f"{self._base()}/Advertisers/{sid}/APISubmissions/{path_segment(batch)}",
            headers=self._headers(),
        )

    def read_submission(self, response: httpx.Response, submitted: str) -> Look:
        """What a look at a submission found (OpenAPI v14 `ApiSubmission`: Status Queued |
        In Progress | Complete, ErrorType, ErrorReason)."""
        code = response.status_code
        if code == 429:
            wait = rate_limit_reset(response)
            retry = classify(response).retry_after
            return Look("wait", "HTTP 429: rate limited", retry_after=retry or wait)
        if not httpx.codes.is_success(code):
            return Look(FOLLOWING, f"HTTP {code}: {excerpt(response, 200)}")
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return Look(FOLLOWING, f"HTTP {code}: not an API submission: {excerpt(response, 120)}")
        status = _text(body.get("Status"), 40)
        if status != "Complete":
            return Look(FOLLOWING, f"impact: {status or 'no Status'}")
        error_type = _text(body.get("ErrorType"), 100)
        error_reason = _text(body.get("ErrorReason"), 300)
        codes = error_reason.split()
        if DUPLICATE in codes:
            return Look(
                DUPLICATE_THERE,
                f"impact: {DUPLICATE}, it already had an action with this OrderId",
                error_type or None,
                error_reason or None,
            )
        if not error_type and not error_reason:
            return Look(ACCEPTED_THERE, f"impact: {submitted} complete, no error")
        what = {
            "conversion": "the conversion",
            "modification": "the reduction",
            "reversal": "the reversal",
        }.get(submitted, "it")
        meaning = REASONS.get(codes[0], "") if codes else ""
        text = f"impact rejected {what}: {error_type or 'error'}: {error_reason or '-'}"
        if meaning:
            text += f" ({meaning})"
        return Look(REJECTED_THERE, text, error_type or None, error_reason or None)

    # ------------------------------------------------------------ refunds

    def build_refund(
        self, refund: Conversion, target: Any, recorded_at: float, now: datetime
    ) -> httpx.Request | Skip | Defer:
        """The reversal or reduction of the purchase this refund gives money back for;
        Skip when that purchase never reached impact; Defer while it is on its way."""
        assert isinstance(target, RefundTarget)
        s = self.settings
        purchase = target.purchase
        if target.link is None:
            return Skip("the refund names nothing that matches a purchase (no payment reference)")
        if purchase is None:
            if time.time() - recorded_at < PURCHASE_GRACE_SECONDS:
                return Defer(300, f"its purchase ({target.link[:80]}) is not in the ledger yet")
            return Skip(
                f"no purchase in the ledger for this refund ({target.link[:80]}): it never reached"
                " relay (or, for Stripe, it was a subscription's first payment, which a refund"
                " does not name)"
            )
        status = target.delivery_status
        if status is None:
            return Skip("the purchase was never sent to impact (its kind is not routed there)")
        if status == PENDING:
            wait = (target.next_attempt_at or 0) - time.time()
            return Defer(max(5.0, wait + 1), "waiting for the purchase to reach impact first")
        if status in (SKIPPED, FAILED):
            why = (target.delivery_error or status)[:300]
            return Skip(f"the purchase never reached impact ({status}: {why})")
        if target.confirmation == FOLLOWING:
            wait = (target.next_check_at or 0) - time.time()
            return Defer(max(5.0, wait + 1), "impact has not confirmed the purchase yet")
        if purchase.currency != refund.currency:
            return Skip(f"the refund is in {refund.currency}, the purchase in {purchase.currency}")
        total = purchase.total
        if total is None or total <= 0:
            return Skip("the purchase had no amount to reverse")
        refunded = sum(
            (
                Decimal(r.total)
                for r in target.refunds
                if r.total is not None and r.currency == purchase.currency
            ),
            Decimal(0),
        )
        form: list[tuple[str, str]] = [
            ("ActionTrackerId", str(s.event_type_id)),
            ("OrderId", order_id(purchase)),
        ]
        url = f"{self._base()}/Advertisers/{path_segment(s.account_sid or '')}/Actions"
        if refunded >= total:
            if any(
                r.submitted == "reversal"
                and r.delivery_status == "delivered"
                and r.confirmation != REJECTED_THERE
                for r in target.refunds
            ):
                return Skip("the action was reversed in full already, by another refund")
            form.append(("DispositionCode", s.refund_reason))
            method = "DELETE"
        else:
            base = action_amount(purchase) or Decimal(0)
            remaining = base * (total - refunded) / total
            form += [("Amount", dec(remaining)), ("Reason", s.refund_reason)]
            method = "PUT"
        return httpx.Request(method, url, data=dict(form), headers=self._headers())


SUBMITTED = {"POST": "conversion", "PUT": "modification", "DELETE": "reversal"}
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DUPLICATE = "CONV_DUPLICATE"
PURCHASE_GRACE_SECONDS = 3600.0  # a refund waits this long for its purchase to be recorded
EPOCH_FLOOR = 1_000_000_000  # 2001-09-09: a reset above this is a moment, below it a delay

# What impact's ErrorReason codes mean (OpenAPI v14 Submissions, FtpErrorDetail.Reason),
# in brief, for `relay deliveries`.
REASONS = {
    "ACTION_REF_NOT_FOUND": "no referral information found for the event",
    "ACTIONTERMS_NOT_FOUND": "the contract has no terms for this event type",
    "ACTIONTRACKER_CAMPAIGN_MISMATCH": "the event type does not belong to the program",
    "ACTIONTRACKER_NOT_ACTIVE": "the event type is not enabled yet",
    "ACTIONTRACKER_NOT_FOUND": "the event type does not exist: check RELAY_IMPACT__EVENT_TYPE_ID",
    "BLACKLISTED_SOURCE_IP": "the customer's IP is restricted",
    "BLOCKED_BY_PROMOCODE": "the partner promoted a code not assigned to them",
    "CAMPAIGN_NOT_FOUND": "the program does not exist: check RELAY_IMPACT__CAMPAIGN_ID",
    "CONTRACT_NOT_FOUND": "no contract with the partner at that time",
    "CREDITING_RULE_MISMATCH": "the crediting rules give it to no partner",
    "MALFORMED": "the click data cannot be read",
    "MAX_RECURRENCES_REACHED": "the referral was credited enough times already",
    "NO_ITEM": "the sale carried no items",
    "NO_VALID_ACTION_REF": "the referral is not commissionable",
    "OID_MISSING": "no OrderId",
    "OTHER_REF_PRIORITIZED": "another referral was preferred",
    "OUTSIDE_ASSOCIATION_WINDOW": "the sale came after the click's referral window",
    "PARTNER_NOT_ACTIVE": "the partner was not active",
    "REFTYPE_NOT_ACCEPTED": "the contract does not pay for this kind of referral",
    "RESTRICTED_PROMOCODE": "the promo code belongs to another partner's channel",
    "UNCLAIMED": "only non-preferred sources are associated",
}


def _text(value: Any, limit: int) -> str:
    """A string field of impact's answer, one line, bounded, emails and secrets masked."""
    if not isinstance(value, str):
        return ""
    return redact(" ".join(value.split()))[:limit]


def _header_int(response: httpx.Response, name: str) -> int | None:
    value = response.headers.get(name, "").strip()
    return int(value) if value.isdigit() and len(value) < 12 else None


def rate_limit_reset(response: httpx.Response) -> float | None:
    """impact's `X-RateLimit-Reset` as seconds from now; None when absent or unreadable.
    The API reference's examples give a UTC epoch second, its text "seconds until the
    limit is reset": a value above 10^9 is read as the former, a smaller one as the latter."""
    raw = response.headers.get("x-ratelimit-reset", "").strip()
    if not raw.isdigit() or len(raw) > 12:
        return None
    value = int(raw)
    if value >= EPOCH_FLOOR:
        return max(0.0, value - time.time())
    return float(value)


def action_amount(conversion: Conversion) -> Decimal | None:
    """The sale amount impact's action got from `build`: the item lines less the order
    discount when items were sent, else the net (OrderSubTotalPostDiscount)."""
    items = [i for i in conversion.items if i.subtotal is not None or i.price is not None]
    if items and len(items) == len(conversion.items):
        lines = sum(
            (i.subtotal if i.subtotal is not None else (i.price or 0) * i.quantity for i in items),
            Decimal(0),
        )
        return max(Decimal(lines) - (conversion.discount or 0), Decimal(0))
    net = conversion.net
    return None if net is None else max(net, Decimal(0))
