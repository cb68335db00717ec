"""Chargebee API stand-in: `GET /api/v2/events`.

As apidocs.chargebee.com documents it: HTTP Basic with the API key as the user name and
an empty password; a missing or wrong key → 401 `api_authentication_failed`. Errors are
`{"message", "type", "api_error_code", "error_code", "error_msg", "http_status_code"}`;
a bad parameter → 400 `param_wrong_value` with `param`.

`limit` 1–100 (default 10); `offset` = a `next_offset` this stand-in gave (anything else →
400); filters `occurred_at[after|before|on]` (Unix seconds; after/before exclusive),
`occurred_at[between]=[a,b]`, `event_type[is|in]` (`in` takes `["a","b"]`), `id[is]`;
`sort_by[asc|desc]=occurred_at` (default newest first). The answer is
`{"list": [{"event": {…}}], "next_offset": "…"}` (no next_offset on the last page).
429 `api_request_limit_exceeded` over `emu.rate_limit_per_minute`.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from starlette.responses import JSONResponse, Response

from tests.emulators.base import Rejection, Seen
from tests.emulators.processor import ProcessorEmulator, query


def _error(status: int, message: str, code: str, kind: str = "invalid_request",
           param: str | None = None, error_code: str | None = None) -> Rejection:
    body = {"message": message, "type": kind, "api_error_code": code,
            "error_code": error_code or code, "error_msg": message, "http_status_code": status}
    if param:
        body["param"] = param
    return Rejection(status, body)


class ChargebeeAPIEmulator(ProcessorEmulator):
    def __init__(self, api_key: str, port: int | None = None) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.events: list[dict[str, Any]] = []
        self._offsets: dict[str, int] = {}

    def start_of(self, offset: str | None) -> int:
        """Where the page asked for with this `offset` starts (0 without one)."""
        return 0 if offset is None else self._offsets.get(offset, -1)

    def add_event(self, event: dict[str, Any]) -> dict[str, Any]:
        self.events.append(event)
        return event

    def rate_limited(self, wait: int) -> Response:
        message = ("Sorry, access has been blocked temporarily due to request count exceeding "
                   "acceptable limits. Please try after some time.")
        return JSONResponse({"message": message, "type": "invalid_request",
                             "api_error_code": "api_request_limit_exceeded",
                             "error_code": "api_request_limit_exceeded", "error_msg": message,
                             "http_status_code": 429}, status_code=429)

    def handle(self, seen: Seen) -> tuple[int, Any]:
        header = seen.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        try:
            user = base64.b64decode(value.strip(), validate=True).decode().split(":", 1)[0]
        except ValueError:
            user = ""
        if scheme.lower() != "basic" or user != self.api_key:
            raise _error(401, "Sorry, authentication failed. Invalid api key",
                         "api_authentication_failed", kind="", error_code="api_authentication_invalid_key")
        if seen.method != "GET" or seen.path != "/api/v2/events":
            raise _error(404, "Sorry, we couldn't find that resource", "resource_not_found")
        return 200, self._events(query())

    def _events(self, params: list[tuple[str, str]]) -> dict[str, Any]:
        args = dict(params)
        allowed = {"limit", "offset", "occurred_at[after]", "occurred_at[before]", "occurred_at[on]",
                   "occurred_at[between]", "event_type[is]", "event_type[in]", "id[is]",
                   "sort_by[asc]", "sort_by[desc]"}
        for key in args:
            if key not in allowed:
                raise _error(400, f"{key} : unknown parameter", "param_wrong_value", param=key)
        try:
            limit = int(args.get("limit", "10"))
        except ValueError:
            raise _error(400, "limit : invalid integer", "param_wrong_value", param="limit") from None
        if not 1 <= limit <= 100:
            raise _error(400, "limit : invalid value", "param_wrong_value", param="limit")

        def number(key: str) -> int | None:
            if key not in args:
                return None
            try:
                return int(args[key])
            except ValueError:
                raise _error(400, f"{key} : invalid timestamp", "param_wrong_value", param=key) from None

        after, before, on = number("occurred_at[after]"), number("occurred_at[before]"), number("occurred_at[on]")
        between = None
        if "occurred_at[between]" in args:
            try:
                between = [int(v) for v in json.loads(args["occurred_at[between]"])]
            except (ValueError, TypeError):
                raise _error(400, "occurred_at[between] : invalid value", "param_wrong_value",
                             param="occurred_at[between]") from None
        types = None
        if "event_type[in]" in args:
            try:
                types = set(json.loads(args["event_type[in]"]))
            except ValueError:
                raise _error(400, "event_type[in] : invalid value", "param_wrong_value",
                             param="event_type[in]") from None
        elif "event_type[is]" in args:
            types = {args["event_type[is]"]}
        for key in ("sort_by[asc]", "sort_by[desc]"):
            if key in args and args[key] != "occurred_at":
                raise _error(400, f"{key} : only occurred_at is supported", "param_wrong_value", param=key)

        def keep(e: dict[str, Any]) -> bool:
            at = e["occurred_at"]
            return ((after is None or at > after) and (before is None or at < before)
                    and (on is None or at == on)
                    and (between is None or between[0] <= at <= between[1])
                    and (types is None or e["event_type"] in types)
                    and ("id[is]" not in args or e["id"] == args["id[is]"]))

        listed = sorted((e for e in self.events if keep(e)), key=lambda e: (e["occurred_at"], e["id"]),
                        reverse="sort_by[asc]" not in args)
        limit = min(limit, self.page_cap or limit)
        start = 0
        if "offset" in args:
            if args["offset"] not in self._offsets:
                raise _error(400, "offset : invalid value", "param_wrong_value", param="offset")
            start = self._offsets[args["offset"]]
        page = listed[start:start + limit]
        out: dict[str, Any] = {"list": [{"event": e} for e in page]}
        if start + limit < len(listed):
            token = json.dumps([page[-1]["occurred_at"], uuid.uuid4().hex[:12]])
            self._offsets[token] = start + limit
            out["next_offset"] = token
        self.pages += 1
        return out
