"""impact.com `POST /Advertisers/{AccountSID}/Conversions` stand-in (OpenAPI v14 rules).

401 on bad Basic auth or an AccountSID in the path that is not the caller's;
400 `{"Status":"ERROR","errors":[…]}` on any rule broken: form encoding only;
a repeated or un-indexed field (the seed's `ItemSubTotal` typo); unknown fields;
CampaignId int ≤ 10 digits; exactly one of EventTypeId / ActionTrackerId (ints ≤
10 digits) / EventTypeCode (≤ 64 chars); EventDate ISO-8601 with offset and a
real date (`NOW` refused here: a relay that retries must not send it); OrderId
1–64; an attribution key (ClickId ≤ 64, CustomerId ≤ 255 and no email,
CustomProfileId ≤ 70, OrderPromoCode ≤ 64); CustomerStatus New/Existing (the
statuses that work without a mapping); CustomerEmail only as SHA-1/SHA-256 hex;
money as decimals with ≤ 2 places; CurrencyCode an ISO 4217 code whenever money
is sent; items numbered 1..n,
each with ItemSku, ItemQuantity ≥ 1 and exactly one of ItemPrice/ItemSubTotal;
never items together with OrderSubTotalPostDiscount or Amount.
200 `{"Status":"QUEUED","QueuedUri":…}`; a repeated OrderId is still queued
(impact rejects it later as CONV_DUPLICATE), and counted in `duplicates`.
Over `rate_limit_per_minute`: 429 with impact's `X-RateLimit-*` headers.
"""

from __future__ import annotations

import base64
import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse, Response

from tests.emulators.base import Emulator, Rejection, Seen, is_currency, real_datetime

ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
MONEY_FIELDS = {"OrderDiscount", "OrderSubTotalPostDiscount", "OrderShipping", "OrderTax", "Amount"}
ORDER_FIELDS = {
    "CampaignId", "EventTypeId", "EventTypeCode", "ActionTrackerId", "EventDate", "OrderId",
    "ClickId", "CustomerId", "CustomerEmail", "CustomerStatus", "CurrencyCode", "OrderPromoCode",
    "CustomProfileId", *MONEY_FIELDS,
}
ITEM = re.compile(r"^(ItemSku|ItemName|ItemCategory|ItemQuantity|ItemPrice|ItemSubTotal)(\d+)$")


class ImpactEmulator(Emulator):
    def __init__(self, account_sid: str = "IRtestSID123", auth_token: str = "impact-token",
                 port: int | None = None) -> None:
        super().__init__(port)
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.actions: dict[str, dict[str, str]] = {}  # OrderId → form
        self.duplicates: list[str] = []

    def bad(self, field: str, message: str) -> Rejection:
        return Rejection(400, {"Status": "ERROR", "errors": [
            {"field": field, "level": "ERROR", "message": message}]})

    def validate(self, seen: Seen) -> None:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if seen.headers.get("authorization") != expected:
            raise Rejection(401, {"Status": "ERROR", "Message": "Unauthorized"})
        if seen.method != "POST" or seen.path != f"/Advertisers/{self.account_sid}/Conversions":
            raise Rejection(404, {"Status": "ERROR", "Message": "Not Found"})
        ranges = {part.split(";")[0].strip().lower() for part in seen.headers.get("accept", "").split(",")}
        if not ranges & {"application/json", "application/*", "*/*"}:
            raise self.bad("Accept", "send Accept: application/json")
        if not seen.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise self.bad("Content-Type", "body must be application/x-www-form-urlencoded")
        pairs = parse_qsl(seen.body.decode(), keep_blank_values=True, strict_parsing=True)
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:
                raise self.bad(key, "parameter sent more than once")
            form[key] = value
        items: dict[int, dict[str, str]] = {}
        for key, value in form.items():
            m = ITEM.match(key)
            if m:
                items.setdefault(int(m.group(2)), {})[m.group(1)] = value
            elif key not in ORDER_FIELDS:
                raise self.bad(key, "unknown parameter")
        self.check_order(form)
        self.check_items(form, items)
        seen.parsed = form

    def handle(self, seen: Seen) -> tuple[int, Any]:
        form = seen.parsed
        order_id = form["OrderId"]
        if order_id in self.actions:
            self.duplicates.append(order_id)  # CONV_DUPLICATE, found later by impact
        else:
            self.actions[order_id] = form
        n = len(self.accepted) + 1
        return 200, {"Status": "QUEUED",
                     "QueuedUri": f"/Advertisers/{self.account_sid}/APISubmissions/A-{n:06d}"}

    def check_order(self, form: dict[str, str]) -> None:
        if not re.fullmatch(r"\d{1,10}", form.get("CampaignId", "")):
            raise self.bad("CampaignId", "required integer of at most 10 digits")
        kinds = [k for k in ("EventTypeId", "EventTypeCode", "ActionTrackerId") if k in form]
        if len(kinds) != 1:
            raise self.bad("EventTypeId", "send exactly one of EventTypeId or EventTypeCode")
        for key in ("EventTypeId", "ActionTrackerId"):
            if key in form and not re.fullmatch(r"\d{1,10}", form[key]):
                raise self.bad(key, "integer of at most 10 digits")
        if "EventTypeCode" in form and not 1 <= len(form["EventTypeCode"]) <= 64:
            raise self.bad("EventTypeCode", "1 to 64 characters")
        event_date = form.get("EventDate", "")
        if not ISO_WITH_OFFSET.match(event_date) or real_datetime(event_date) is None:
            raise self.bad("EventDate", "ISO-8601 date-time with offset required (no NOW from a retrying relay)")
        if not 1 <= len(form.get("OrderId", "")) <= 64:
            raise self.bad("OrderId", "required, at most 64 characters")
        keys = [k for k in ("ClickId", "CustomerId", "CustomProfileId", "OrderPromoCode") if form.get(k)]
        if not keys:
            raise self.bad("ClickId", "an attribution key (ClickId, CustomerId…) is required")
        if len(form.get("ClickId", "")) > 64:
            raise self.bad("ClickId", "at most 64 characters")
        if len(form.get("CustomerId", "")) > 255 or "@" in form.get("CustomerId", ""):
            raise self.bad("CustomerId", "at most 255 characters, no email addresses")
        if len(form.get("CustomProfileId", "")) > 70:
            raise self.bad("CustomProfileId", "at most 70 characters")
        if "CustomerStatus" in form and form["CustomerStatus"].lower() not in ("new", "existing"):
            raise self.bad("CustomerStatus", "not a status of the Customer Status Mapping (New, Existing)")
        if len(form.get("OrderPromoCode", "")) > 64:
            raise self.bad("OrderPromoCode", "at most 64 characters")
        if "CustomerEmail" in form and not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", form["CustomerEmail"]):
            raise self.bad("CustomerEmail", "must be a SHA1 or SHA256 hash; plaintext emails are not accepted")
        for key in MONEY_FIELDS & set(form):
            self.decimal(key, form[key])
        has_money = bool(MONEY_FIELDS & set(form)) or any(k.startswith(("ItemPrice", "ItemSubTotal")) for k in form)
        if has_money and not is_currency(form.get("CurrencyCode")):
            raise self.bad("CurrencyCode", "3-letter ISO code required with monetary values")

    def check_items(self, form: dict[str, str], items: dict[int, dict[str, str]]) -> None:
        if not items:
            return
        if sorted(items) != list(range(1, len(items) + 1)):
            raise self.bad("ItemSku1", "item indexes must run 1..n")
        if "OrderSubTotalPostDiscount" in form or "Amount" in form:
            raise self.bad("OrderSubTotalPostDiscount", "do not send order subtotal or Amount with item data")
        for n, item in items.items():
            if not 1 <= len(item.get("ItemSku", "")) <= 255:
                raise self.bad(f"ItemSku{n}", "required, at most 255 characters")
            if not re.fullmatch(r"[1-9]\d*", item.get("ItemQuantity", "")):
                raise self.bad(f"ItemQuantity{n}", "positive integer required")
            prices = [k for k in ("ItemPrice", "ItemSubTotal") if k in item]
            if len(prices) != 1:
                raise self.bad(f"ItemSubTotal{n}", "send exactly one of ItemPrice or ItemSubTotal")
            self.decimal(f"{prices[0]}{n}", item[prices[0]])

    def decimal(self, field: str, value: str) -> Decimal:
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise self.bad(field, "must be a decimal number") from None
        if not amount.is_finite() or amount.as_tuple().exponent < -2 or abs(amount) >= Decimal("1e10"):  # type: ignore[operator]
            raise self.bad(field, "DECIMAL(12,2): at most 2 decimal places")
        return amount

    def rate_limited(self, wait: int) -> Response:
        """impact's 429: `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`,
        the UTC epoch second when the window resets (the API reference and every example
        show an epoch; an older page calls it seconds until the reset). No Retry-After."""
        reset = int(time.time()) + wait
        return JSONResponse({"Status": "ERROR", "Message": "Too Many Requests"}, status_code=429, headers={
            "X-RateLimit-Limit": str(self.rate_limit_per_minute or 0), "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset)})
