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

Beyond the conversion post (OpenAPI v14 Submissions and Actions, docs/impact.md):

- Every queued request is an API submission, `GET /Advertisers/{SID}/APISubmissions/
  {BatchId}`: Status `Queued` → `In Progress` → `Complete`, with `ErrorType` and
  `ErrorReason` when it failed. The test drives it: `progress = "per_look"` (each look
  moves it one stage on), or `"manual"` and `step()`. `plan(order_id, …)` decides a
  conversion's outcome: accepted (default), rejected with an ErrorType/ErrorReason, or
  "never" (stays In Progress). A conversion whose OrderId impact already credited
  completes with `CONV_DUPLICATE`. Only a completed, accepted conversion is an action
  (`credited`, by OrderId).
- `PUT /Advertisers/{SID}/Actions` (modify: `Amount` the new sale amount, `Reason`
  required) and `DELETE` (reverse: `DispositionCode` required, from the documented
  list), the action named by `ActionId` or by `ActionTrackerId` + `OrderId`; form
  encoded; queued as Modification / Reversal submissions, applied when they complete
  (an action that does not exist, is reversed already, or had 1,000 modifications is
  an error of the submission, as impact reports it later, not a 400). Codes the
  stand-in makes up for those errors are marked STAND_IN_….
- `hourly_limit`: every request (conversions included) counts in a fixed window of
  `window_seconds` that starts with its first request and resets whole at its end;
  every answer carries X-RateLimit-Limit/Remaining/Reset (the reset as a UTC epoch
  second, as in impact's examples) and one past the limit is a 429 with them and no
  Retry-After.
- Two looks at one submission at the same time are recorded in `overlaps`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.emulators.base import Emulator, Rejection, Seen, is_currency, real_datetime

STAGES = ("Queued", "In Progress", "Complete")
REASON_CODES = frozenset({  # ActionModificationRequest.Reason, default codes (v14)
    "ORDER_UPDATE", "ITEM_RETURNED", "CONS_FRAUD", "CONS_ERROR", "ORDER_ERROR", "PUB_ACT_DISPUTE",
    "ADV_ACT_DISPUTE", "NOT_COMPLIANCE_TERMS", "ITEM_OUT_OF_STOCK", "TEST_ACTION",
    "PARTNER_NOT_ACTIVE", "CREDITED_DIFFERENT_MP", "OTHER",
})
DISPOSITION_CODES = frozenset({  # ActionReversalRequest.DispositionCode enum (v14)
    "REJECTED", "CONS_INFO_INVALID", "CONS_ERROR", "CONS_FRAUD", "ITEM_RETURNED",
    "ITEM_OUT_OF_STOCK", "ORDER_ERROR", "PUB_ACT_DISPUTE", "NOT_COMPLIANCE_TERMS", "MP_RETURNED",
    "OTHER", "CREDITED_DIFFERENT_MP", "ADV_ACT_DISPUTE", "TEST_ACTION",
})
CHANGE_FIELDS = {"ActionId", "ActionTrackerId", "OrderId", "Reason", "DispositionCode", "Amount",
                 "CustomerStatus"}
MAX_MODIFICATIONS = 1000


@dataclass
class Submission:
    batch_id: str
    type: str  # Conversion | Modification | Reversal
    form: dict[str, str]
    payload: str
    submitted_at: float = field(default_factory=time.time)
    stage: int = 0
    never: bool = False  # planned never to complete
    error_type: str | None = None
    error_reason: str | None = None
    completed_at: float | None = None
    looks: int = 0


@dataclass
class Action:
    id: str
    order_id: str
    tracker_id: str
    amount: Decimal
    state: str = "PENDING"  # PENDING | REVERSED
    changes: list[tuple[str, str]] = field(default_factory=list)  # (kind, detail)

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
        # Submissions and actions (see the module docstring).
        self.submissions: dict[str, Submission] = {}
        self.credited: dict[str, Action] = {}  # OrderId → the action impact keeps
        self.plans: dict[str, tuple[str | None, str | None] | str] = {}
        self.progress = "per_look"
        self.looks: list[Seen] = []
        self.changes: list[Seen] = []  # PUT / DELETE /Actions queued
        self.api_rejected: list[tuple[Seen, int, Any]] = []
        self.overlaps: list[str] = []
        self.look_delay = 0.0
        self.hourly_limit: int | None = None
        self.window_seconds = 3600.0
        self._window_start = 0.0
        self._used = 0
        self._looking: set[str] = set()
        self._api_lock = threading.Lock()
        self._api_faults: deque[tuple[int, dict[str, str]]] = deque()

    # -------------------------------------------------------------- control

    def plan(self, order_id: str, outcome: str | tuple[str | None, str | None] = "accept") -> None:
        """How the conversion with this OrderId completes: "accept", "never", or
        (ErrorType, ErrorReason) for a rejection."""
        self.plans[order_id] = outcome

    def step(self, stages: int = 1) -> None:
        """Move every submission that is not complete `stages` stages on."""
        with self._api_lock:
            for sub in list(self.submissions.values()):
                for _ in range(stages):
                    self._advance(sub)

    def fail_api(self, count: int, status: int, headers: dict[str, str] | None = None) -> None:
        """The next `count` submission looks or action changes get `status` (nothing changes)."""
        for _ in range(count):
            self._api_faults.append((status, headers or {}))

    def submission_of(self, order_id: str, type_: str = "Conversion") -> list[Submission]:
        return [s for s in self.submissions.values()
                if s.type == type_ and s.form.get("OrderId") == order_id]

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
        return 200, self._queue("Conversion", form, seen.body.decode())

    # -------------------------------------------------------------- submissions

    def _queue(self, type_: str, form: dict[str, str], payload: str) -> dict[str, str]:
        batch = f"A-{uuid.uuid4()}"
        sub = Submission(batch, type_, form, payload)
        planned = self.plans.get(form.get("OrderId", "")) if type_ == "Conversion" else None
        if planned == "never":
            sub.never = True
        elif isinstance(planned, tuple):
            sub.error_type, sub.error_reason = planned
        with self._api_lock:
            self.submissions[batch] = sub
        return {"Status": "QUEUED", "QueuedUri": f"/Advertisers/{self.account_sid}/APISubmissions/{batch}"}

    def _advance(self, sub: Submission) -> None:
        """One stage on (under the lock); completing applies the submission."""
        if sub.stage >= 2 or (sub.never and sub.stage >= 1):
            return
        sub.stage += 1
        if sub.stage == 2:
            sub.completed_at = time.time()
            if sub.error_type is None and sub.error_reason is None:
                self._apply(sub)

    def _apply(self, sub: Submission) -> None:
        form = sub.form
        if sub.type == "Conversion":
            order_id = form["OrderId"]
            if order_id in self.credited:
                sub.error_type, sub.error_reason = "Validation", "CONV_DUPLICATE"
                return
            self.credited[order_id] = Action(
                f"1000.{len(self.credited) + 4636}.{uuid.uuid4().int % 10**6}", order_id,
                form.get("EventTypeId", ""), sale_amount(form))
            return
        action = self._find(form)
        if action is None:
            sub.error_type, sub.error_reason = "Validation", "STAND_IN_ACTION_NOT_FOUND"
        elif action.state == "REVERSED":
            sub.error_type, sub.error_reason = "Validation", "STAND_IN_ACTION_REVERSED"
        elif len(action.changes) >= MAX_MODIFICATIONS:
            sub.error_type, sub.error_reason = "Validation", "STAND_IN_MAX_MODIFICATIONS"
        elif sub.type == "Reversal":
            action.state = "REVERSED"
            action.changes.append(("reversal", form["DispositionCode"]))
        else:
            if "Amount" in form:
                action.amount = Decimal(form["Amount"])
                if action.amount == 0:
                    action.state = "REVERSED"
            action.changes.append(("modification", form.get("Reason") or form.get("DispositionCode", "")))

    def _find(self, form: dict[str, str]) -> Action | None:
        if form.get("ActionId"):
            return next((a for a in self.credited.values() if a.id == form["ActionId"]), None)
        action = self.credited.get(form.get("OrderId", ""))
        if action is None or action.tracker_id != form.get("ActionTrackerId"):
            return None
        return action

    def _submission_json(self, sub: Submission) -> dict[str, Any]:
        done = sub.stage == 2
        return {
            "BatchId": sub.batch_id,
            "AccountId": 10001,
            "SubmissionDate": _iso(sub.submitted_at),
            "CampaignId": int(sub.form.get("CampaignId", "0") or 0),
            "ActionTrackerId": int(sub.form.get("EventTypeId") or sub.form.get("ActionTrackerId") or 0),
            "OrderId": sub.form.get("OrderId"),
            "Payload": sub.payload,
            "Type": sub.type,
            "Status": STAGES[sub.stage],
            "CompletionDate": _iso(sub.completed_at) if done and sub.completed_at else "",
            "ErrorType": (sub.error_type or "") if done else "",
            "ErrorReason": (sub.error_reason or "") if done else "",
            "Uri": f"/Advertisers/{self.account_sid}/APISubmissions/{sub.batch_id}",
        }

    # -------------------------------------------------------------- serving

    async def _endpoint(self, request: Request) -> Response:
        """Rate budget first (every route), then conversions as before and the
        submission and action routes here; every answer carries the budget headers."""
        blocked = self._spend()
        if blocked is not None:
            body = await request.body()
            seen = Seen(request.method, request.url.path, dict(request.headers), body)
            self.requests.append(seen)
            self.rejected.append((seen, 429, "hourly rate limit"))
            return blocked
        if request.method == "POST":
            response = await super()._endpoint(request)
        else:
            response = await self._api(request)
        response.headers.update(self._budget_headers())
        return response

    def _spend(self) -> Response | None:
        if self.hourly_limit is None:
            return None
        now = time.time()
        with self._api_lock:
            if now >= self._window_start + self.window_seconds:
                self._window_start, self._used = now, 0
            if self._used < self.hourly_limit:
                self._used += 1
                return None
        return JSONResponse({"Status": "ERROR", "Message": "Too Many Requests"}, status_code=429,
                            headers=self._budget_headers())

    def _budget_headers(self) -> dict[str, str]:
        if self.hourly_limit is None:
            return {}
        with self._api_lock:
            remaining = max(0, self.hourly_limit - self._used)
            reset = self._window_start + self.window_seconds
        return {"X-RateLimit-Limit": str(self.hourly_limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(int(reset) + 1)}

    async def _api(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()},
                    body, query=request.url.query)
        if self._api_faults:
            status, headers = self._api_faults.popleft()
            self.api_rejected.append((seen, status, "injected"))
            return JSONResponse({"Status": "ERROR", "Message": "injected"}, status_code=status,
                                headers=headers)
        try:
            status, payload = await self._route(seen)
        except Rejection as exc:
            self.api_rejected.append((seen, exc.status, exc.reason))
            return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
        return JSONResponse(payload, status_code=status)

    async def _route(self, seen: Seen) -> tuple[int, Any]:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if seen.headers.get("authorization") != expected:
            raise Rejection(401, {"Status": "ERROR", "Message": "Unauthorized"})
        if "application/json" not in seen.headers.get("accept", ""):
            raise self.bad("Accept", "send Accept: application/json")
        base = f"/Advertisers/{self.account_sid}"
        if seen.method == "GET" and seen.path.startswith(base + "/APISubmissions/"):
            return await self._look(seen, seen.path[len(base + "/APISubmissions/"):])
        if seen.method in ("PUT", "DELETE") and seen.path == base + "/Actions":
            return self._change(seen)
        raise Rejection(404, {"Status": "ERROR", "Message": "Not Found"})

    async def _look(self, seen: Seen, batch: str) -> tuple[int, Any]:
        with self._api_lock:
            sub = self.submissions.get(batch)
            if sub is None:
                raise Rejection(404, {"Status": "ERROR", "Message": "Not Found"})
            if batch in self._looking:
                self.overlaps.append(batch)
            self._looking.add(batch)
        try:
            if self.look_delay:
                await asyncio.sleep(self.look_delay)
            with self._api_lock:
                sub.looks += 1
                self.looks.append(seen)
                answer = self._submission_json(sub)  # what it was when looked at
                if self.progress == "per_look":
                    self._advance(sub)
        finally:
            with self._api_lock:
                self._looking.discard(batch)
        return 200, answer

    def _change(self, seen: Seen) -> tuple[int, Any]:
        if not seen.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise self.bad("Content-Type", "body must be application/x-www-form-urlencoded")
        form: dict[str, str] = {}
        for key, value in parse_qsl(seen.body.decode(), keep_blank_values=True, strict_parsing=True):
            if key in form:
                raise self.bad(key, "parameter sent more than once")
            if key not in CHANGE_FIELDS:
                raise self.bad(key, "unknown parameter")
            form[key] = value
        if not form.get("ActionId"):
            if not re.fullmatch(r"\d{1,10}", form.get("ActionTrackerId", "")) or not (
                    1 <= len(form.get("OrderId", "")) <= 64):
                raise self.bad("ActionId", "send ActionId, or ActionTrackerId and OrderId together")
        if seen.method == "DELETE":
            if form.get("DispositionCode") not in DISPOSITION_CODES:
                raise self.bad("DispositionCode", "required: a valid code explaining the reversal")
            if "Amount" in form or "Reason" in form:
                raise self.bad("Amount", "a reversal takes a DispositionCode only")
            type_ = "Reversal"
        else:
            if form.get("Reason") not in REASON_CODES:
                raise self.bad("Reason", "required: a valid reason code for the modification")
            if "Amount" in form:
                amount = self.decimal("Amount", form["Amount"])
                if amount < 0:
                    raise self.bad("Amount", "the new sale amount cannot be negative")
            elif "CustomerStatus" not in form:
                raise self.bad("Amount", "nothing to modify")
            type_ = "Modification"
        seen.parsed = form
        self.changes.append(seen)
        return 200, self._queue(type_, form, seen.body.decode())

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

def sale_amount(form: dict[str, str]) -> Decimal:
    """The action's sale amount as impact computes it from a conversion: item lines less
    the order discount, else the order subtotal (or Amount)."""
    lines = Decimal(0)
    found = False
    for key, value in form.items():
        m = ITEM.match(key)
        if m and m.group(1) == "ItemSubTotal":
            lines += Decimal(value)
            found = True
        elif m and m.group(1) == "ItemPrice":
            lines += Decimal(value) * int(form.get(f"ItemQuantity{m.group(2)}", "1"))
            found = True
    if found:
        return lines - Decimal(form.get("OrderDiscount", "0"))
    return Decimal(form.get("OrderSubTotalPostDiscount") or form.get("Amount") or "0")


def _iso(moment: float | None) -> str:
    if moment is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(moment))
