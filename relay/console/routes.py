"""The console's routes: sign-in, the pages, and the POSTs that change state.

Mounted at /console by relay.app when RELAY_ADMIN_TOKEN is set (without it nothing is
mounted and every /console path is a 404):

    GET  /console/                 overview: webhooks per source, deliveries per destination
    GET  /console/deliveries       failed / skipped / … deliveries, filtered, paged by id
    POST /console/deliveries/retry one delivery, or all failed (skipped) of a destination
    GET  /console/search?q=        by order key, event id or buyer email
    GET  /console/conversions/N    one conversion: raw event, normalized, every attempt,
                                   the request as sent (secrets masked)
    GET  /console/events           quarantined and ignored events
    GET  /console/events/N         one stored event with its raw body
    POST /console/events/replay    replay one, or all shown
    GET  /console/sign-in, POST /console/sign-in, POST /console/sign-out
    GET  /console/static/console.css

Every page reads through the Store interface, like the CLI; retry and replay call what
`relay retry` and `relay replay` call. Every POST carries the session's CSRF token
(403 and nothing changed without it) and answers with a redirect to a page that shows
the outcome (post-redirect-get). Every answer carries the headers of `SecurityHeaders`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay import replay as replaying
from relay.console import filters
from relay.console.auth import NOTE_COOKIE, NOTE_SECONDS, SESSION_COOKIE, Keys, Session
from relay.console.outgoing import pretty_json, rebuild
from relay.console.summary import describe_rate, overview
from relay.destinations import Skip
from relay.errors import ConfigError, StoreError
from relay.settings import DESTINATION_FIELDS, SOURCE_FIELDS
from relay.store import (
    ACCEPTED,
    DELIVERED,
    FAILED,
    FORGET,
    IGNORED,
    PENDING,
    QUARANTINED,
    SKIPPED,
    STATUSES,
    DeliveryRow,
    DisabledDestination,
    email_hash,
)
from relay.throttle import Throttle

if TYPE_CHECKING:
    from relay.app import Relay

PAGE = 50
MAX_FORM_BYTES = 64 * 1024
SIGN_IN_FAILURES = 5  # wrong tokens in a row from one address before it waits (relay.throttle)
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
DELIVERY_FILTERS = (FAILED, SKIPPED, PENDING, DELIVERED, "any")
EVENT_FILTERS = (QUARANTINED, IGNORED)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer of the console, and `Cache-Control:
    no-store` to every one that does not set its own (pages hold buyers' data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Refused(Exception):
    """A request the console answers with an error page (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("relay.console", "templates"),
        autoescape=True,  # every value is escaped; no template uses |safe
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    filters.install(env)
    return env


def _day(text: str, field: str) -> float | None:
    """A date from an <input type=date> (YYYY-MM-DD, UTC) as epoch seconds, or None."""
    text = text.strip()
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise Refused(400, f"{field}: give a date as YYYY-MM-DD, not {text[:20]!r}") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _cursor(text: str) -> tuple[float, int] | None:
    """An Older link's position, "time:id" (the last row shown), or None for the newest."""
    if not text:
        return None
    at, _, row = text.partition(":")
    try:
        return float(at), int(row)
    except ValueError:
        raise Refused(400, "before must be a position from an Older link") from None


def _position(row: DeliveryRow) -> str:
    return f"{row.created_at!r}:{row.id}"


def _int(text: str | None, field: str) -> int | None:
    if text is None or not text.strip():
        return None
    if not text.strip().isdigit() or len(text.strip()) > 18:
        raise Refused(400, f"{field} must be a whole number")
    return int(text)


Handler = Callable[[Request, Session], Awaitable[Response]]
FormHandler = Callable[[Request, Session, dict[str, list[str]]], Awaitable[Response]]


class Console:
    def __init__(self, relay: Relay) -> None:
        token = relay.settings.admin_token
        assert token is not None and token.get_secret_value()
        self.relay = relay
        self.keys = Keys(token.get_secret_value())
        self.throttle = Throttle(failures=SIGN_IN_FAILURES)
        self.templates = Jinja2Templates(env=_environment())
        self.css = (files("relay.console") / "static" / "console.css").read_bytes()
        self.css_version = hashlib.sha256(self.css).hexdigest()[:12]

    def app(self) -> ASGIApp:
        page, post = self._page, self._post
        routes = [
            Route("/", page(self.overview), methods=["GET"]),
            Route("/deliveries", page(self.deliveries), methods=["GET"]),
            Route("/deliveries/retry", post(self.retry), methods=["POST"]),
            Route("/destinations/enable", post(self.enable), methods=["POST"]),
            Route("/search", page(self.search), methods=["GET"]),
            Route("/conversions/{id:int}", page(self.conversion), methods=["GET"]),
            Route("/events", page(self.events), methods=["GET"]),
            Route("/events/{id:int}", page(self.event), methods=["GET"]),
            Route("/events/replay", post(self.replay), methods=["POST"]),
            Route("/sign-in", self.sign_in_page, methods=["GET"]),
            Route("/sign-in", self.sign_in, methods=["POST"]),
            Route("/sign-out", post(self.sign_out), methods=["POST"]),
            Route("/static/console.css", self.stylesheet, methods=["GET", "HEAD"]),
        ]
        app = Starlette(routes=routes, exception_handlers={404: self.not_found})
        return SecurityHeaders(app)

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def root(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def _session(self, request: Request) -> Session | None:
        return self.keys.session(request.cookies.get(SESSION_COOKIE))

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        code: int = 200,
        **context: Any,
    ) -> Response:
        root = self.root(request)
        note: list[tuple[str, str]] = []
        if session is not None:
            note = self.keys.read_note(session, request.cookies.get(NOTE_COOKIE))
        context.update(
            code=code,
            root=root,
            session=session,
            csrf=self.keys.csrf(session) if session else "",
            css=f"{root}/static/console.css?v={self.css_version}",
            note=note,
            secure=request.url.scheme == "https",
            here=self._here(request),
            url=lambda path, **params: _url(root + path, params),
        )
        response = self.templates.TemplateResponse(request, template, context, status_code=code)
        if request.cookies.get(NOTE_COOKIE):  # shown once
            response.delete_cookie(NOTE_COOKIE, path=root + "/")
        return response

    @staticmethod
    def _here(request: Request) -> str:
        return request.url.path + (f"?{request.url.query}" if request.url.query else "")

    def _page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A GET page: signed in (else to the sign-in form), errors as pages."""

        async def endpoint(request: Request) -> Response:
            session = self._session(request)
            if session is None:
                target = _url(self.root(request) + "/sign-in", {"next": self._here(request)})
                return RedirectResponse(target, status_code=303)
            try:
                return await handler(request, session)
            except Refused as exc:
                return self.render(request, "error.html", session, exc.status, message=exc.message)
            except StoreError as exc:
                return self.render(
                    request, "error.html", session, 503, message=f"The ledger is unavailable: {exc}"
                )

        return endpoint

    def _post(self, handler: FormHandler) -> Callable[[Request], Awaitable[Response]]:
        """A state change: signed in and the session's CSRF token, or 403 and nothing done."""

        async def endpoint(request: Request) -> Response:
            session = self._session(request)
            try:
                form = await self._form(request)
            except Refused as exc:
                return self.render(request, "error.html", session, exc.status, message=exc.message)
            token = (form.get("csrf") or [""])[0]
            if session is None or not self.keys.csrf_ok(session, token):
                message = (
                    "This form did not come from your console session (its CSRF token is"
                    " missing or belongs to another session), so nothing was changed."
                    " Reload the page and try again."
                )
                return self.render(request, "error.html", session, 403, message=message)
            try:
                return await handler(request, session, form)
            except Refused as exc:
                return self.render(request, "error.html", session, exc.status, message=exc.message)
            except StoreError as exc:
                message = f"Nothing was changed: the ledger is unavailable ({exc})."
                return self.render(request, "error.html", session, 503, message=message)

        return endpoint

    @staticmethod
    async def _form(request: Request) -> dict[str, list[str]]:
        kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise Refused(415, "Send the console's own forms (application/x-www-form-urlencoded).")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise Refused(413, "That form is too large.")
        return parse_qs(
            body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=2000
        )

    def _back(self, request: Request, form: dict[str, list[str]], default: str) -> str:
        """Where a POST returns to: a console path from the form, else `default`."""
        root = self.root(request)
        back = (form.get("back") or [""])[0]
        if back.startswith(root + "/") and not back.startswith("//") and "\\" not in back:
            return back
        return root + default

    def _done(
        self, request: Request, session: Session, target: str, lines: list[tuple[str, str]]
    ) -> Response:
        """Post-redirect-get: to `target`, which shows `lines` (text, link) once."""
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            NOTE_COOKIE,
            self.keys.note(session, lines),
            max_age=NOTE_SECONDS,
            path=self.root(request) + "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def _wake(self) -> None:
        if self.relay.worker is not None:
            self.relay.worker.wake()

    def _destination_names(self) -> list[str]:
        configured = list(self.relay.destinations)
        return configured + [n for n in DESTINATION_FIELDS if n not in configured]

    async def not_found(self, request: Request, exc: Exception) -> Response:
        return self.render(
            request, "error.html", self._session(request), 404, message="No such page."
        )

    async def stylesheet(self, request: Request) -> Response:
        return Response(
            self.css,
            media_type="text/css; charset=utf-8",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    # ------------------------------------------------------------ sign-in

    async def sign_in_page(self, request: Request) -> Response:
        if self._session(request) is not None:
            return RedirectResponse(self._next(request), status_code=303)
        return self.render(request, "sign_in.html", None, next=self._next(request), error="")

    def _next(self, request: Request, given: str | None = None) -> str:
        root = self.root(request)
        target = given if given is not None else request.query_params.get("next", "")
        if target.startswith(root + "/") and not target.startswith("//") and "\\" not in target:
            return target
        return root + "/"

    async def sign_in(self, request: Request) -> Response:
        address = request.client.host if request.client else None
        wait = self.throttle.locked(address)
        if wait:
            return self._locked_out(request, wait)
        try:
            form = await self._form(request)
        except Refused as exc:
            return self.render(request, "error.html", None, exc.status, message=exc.message)
        target = self._next(request, (form.get("next") or [""])[0])
        if not self.keys.token_matches((form.get("token") or [""])[0]):
            wait = self.throttle.failed(address)
            if wait:
                return self._locked_out(request, wait)
            error = "That is not the admin token (RELAY_ADMIN_TOKEN)."
            return self.render(request, "sign_in.html", None, 401, next=target, error=error)
        self.throttle.succeeded(address)
        session, cookie = self.keys.new_session()
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=session.expires - int(time.time()),
            path=self.root(request) + "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def _locked_out(self, request: Request, wait: int) -> Response:
        error = f"Too many wrong tokens from your address: wait {wait} s and try again."
        response = self.render(
            request, "sign_in.html", None, 429, next=self._next(request), error=error
        )
        response.headers["Retry-After"] = str(wait)
        return response

    async def sign_out(
        self, request: Request, session: Session, form: dict[str, list[str]]
    ) -> Response:
        self.keys.sign_out(session)
        response = RedirectResponse(self.root(request) + "/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=self.root(request) + "/")
        return response

    # ------------------------------------------------------------ overview

    async def overview(self, request: Request, session: Session) -> Response:
        figures = await overview(self.relay.store, self.relay.sources, self.relay.destinations)
        rates = {d.name: describe_rate(d) for d in figures.destinations}
        return self.render(
            request, "overview.html", session, figures=figures, rates=rates, now=time.time()
        )

    # ------------------------------------------------------------ deliveries

    async def deliveries(self, request: Request, session: Session) -> Response:
        query = request.query_params
        status = query.get("status") or FAILED
        if status not in DELIVERY_FILTERS:
            raise Refused(400, f"status must be one of {', '.join(DELIVERY_FILTERS)}")
        destination = query.get("destination", "")
        names = self._destination_names()
        if destination and destination not in names:
            raise Refused(400, f"no destination {destination[:40]!r}")
        source = query.get("source", "")
        if source and source not in SOURCE_FIELDS:
            raise Refused(400, f"no source {source[:40]!r}")
        since = _day(query.get("since", ""), "from")
        until = _day(query.get("until", ""), "to")
        if until is not None:
            until += 86400  # the whole day given
        before = _cursor(query.get("before", ""))
        rows = await self.relay.store.delivery_page(
            STATUSES if status == "any" else [status],
            [destination] if destination else names,
            source or None,
            since,
            until,
            before,
            PAGE + 1,
        )
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        params = {k: v for k, v in query.items() if k != "before" and v}
        return self.render(
            request,
            "deliveries.html",
            session,
            rows=rows,
            status=status,
            destination=destination,
            source=source,
            since=query.get("since", ""),
            until=query.get("until", ""),
            statuses=DELIVERY_FILTERS,
            destinations=list(self.relay.destinations) or names,
            sources=SOURCE_FIELDS,
            params=params,
            older={**params, "before": _position(rows[-1])} if more and rows else None,
            paged=before is not None,
        )

    async def retry(
        self, request: Request, session: Session, form: dict[str, list[str]]
    ) -> Response:
        """`relay retry ID` or `relay retry --failed|--skipped --destination D`: the same
        store calls (look the delivery up, then requeue)."""
        store = self.relay.store
        now = time.time()
        back = self._back(request, form, "/deliveries")
        delivery_id = _int((form.get("id") or [""])[0], "id")
        if delivery_id is not None:
            found = await store.deliveries(delivery_id=delivery_id)
            if not found:
                raise Refused(404, f"There is no delivery {delivery_id}.")
            row = found[0]
            what = f"Delivery {row.id} to {row.destination} ({row.kind} {row.order_key})"
            link = f"{self.root(request)}/conversions/{row.conversion_id}#delivery-{row.id}"
            if row.status not in (FAILED, SKIPPED):
                line = f"{what} is {row.status}: nothing to retry."
                return self._done(request, session, back, [(line, link)])
            if row.erased:
                why = "relay forget" if row.erased == FORGET else "retention (RELAY_RETENTION_DAYS)"
                line = (
                    f"{what} was not requeued: its buyer's personal data was removed by {why},"
                    " so it cannot be sent again."
                )
                return self._done(request, session, back, [(line, link)])
            count = await store.requeue([row.id], None, now, (FAILED, SKIPPED))
            self._wake()
            line = (
                f"{what} is pending again: the worker sends it now."
                if count
                else f"{what} changed meanwhile and was not requeued."
            )
            return self._done(request, session, back, [(line, link)])
        destination = (form.get("destination") or [""])[0]
        status = (form.get("status") or [""])[0]
        if destination not in self._destination_names() or status not in (FAILED, SKIPPED):
            raise Refused(400, "Retry needs a delivery id, or a destination and failed/skipped.")
        # As `relay retry --failed --destination D`: D is enabled again first, if its
        # endpoint had disabled it.
        enabled = await store.enable_destination(destination)
        count = await store.requeue((), destination, now, (status,))
        self._wake()
        noun = "delivery" if count == 1 else "deliveries"
        lines = [(_enabled_line(enabled), "")] if enabled is not None else []
        lines.append(
            (
                f"Requeued {count} {status} {noun} to {destination}: the worker sends them now."
                if count
                else f"No {status} deliveries to {destination} to retry.",
                "",
            )
        )
        return self._done(request, session, back, lines)

    async def enable(
        self, request: Request, session: Session, form: dict[str, list[str]]
    ) -> Response:
        """`relay retry --destination D`: send to D again after its endpoint disabled it."""
        destination = (form.get("destination") or [""])[0]
        if destination not in self._destination_names():
            raise Refused(400, f"no destination {destination[:40]!r}")
        enabled = await self.relay.store.enable_destination(destination)
        self._wake()
        line = (
            _enabled_line(enabled)
            if enabled is not None
            else f"{destination} was not disabled: nothing to enable."
        )
        return self._done(request, session, self._back(request, form, "/"), [(line, "")])

    # ------------------------------------------------------------ search

    async def search(self, request: Request, session: Session) -> Response:
        q = request.query_params.get("q", "").strip()[:500]
        before = _int(request.query_params.get("before"), "before")
        store = self.relay.store
        conversions: list[Any] = []
        events: list[Any] = []
        by = ""
        if q and "@" in q:
            by = "email"
            conversions = await store.find_conversions(
                SOURCE_FIELDS, email_hash=email_hash(q), before=before, limit=PAGE + 1
            )
        elif q:
            by = "key"
            conversions = await store.find_conversions(SOURCE_FIELDS, order_key=q, limit=PAGE + 1)
            events = await store.find_events(SOURCE_FIELDS, q)
        more = len(conversions) > PAGE
        conversions = conversions[:PAGE]
        return self.render(
            request,
            "search.html",
            session,
            q=q,
            by=by,
            conversions=conversions,
            events=events,
            older={"q": q, "before": conversions[-1].id} if more and by == "email" else None,
        )

    # ------------------------------------------------------------ one conversion

    async def conversion(self, request: Request, session: Session) -> Response:
        store = self.relay.store
        conversion_id = int(request.path_params["id"])
        found = await store.conversion(conversion_id)
        if found is None:
            raise Refused(404, f"There is no conversion {conversion_id}.")
        events = await store.events(ids=[found.event_row], limit=1, with_body=True)
        event = events[0] if events else None
        now = datetime.now(UTC)
        deliveries = []
        for row in await store.conversion_deliveries(conversion_id):
            dest = self.relay.destinations.get(row.destination)
            if dest is None:
                request_shown: Any = None
                skipped = f"{row.destination} is not configured now"
            else:
                try:
                    built = rebuild(dest, found.conversion, now)
                except Exception as exc:  # a destination's build must not take the page down
                    built = Skip(f"cannot rebuild the request: {type(exc).__name__}")
                request_shown = None if isinstance(built, Skip) else built
                skipped = built.reason if isinstance(built, Skip) else ""
            deliveries.append(
                {
                    "row": row,
                    "attempts": await store.attempts(row.id),
                    "request": request_shown,
                    "not_built": skipped,
                }
            )
        body = event.body if event is not None else None
        return self.render(
            request,
            "conversion.html",
            session,
            stored=found,
            c=found.conversion,
            event=event,
            raw=_raw_text(body),
            deliveries=deliveries,
            enriched=self.relay.settings.stripe.api_key is not None,
        )

    # ------------------------------------------------------------ events

    async def events(self, request: Request, session: Session) -> Response:
        query = request.query_params
        status = query.get("status") or QUARANTINED
        if status not in EVENT_FILTERS:
            raise Refused(400, f"status must be one of {', '.join(EVENT_FILTERS)}")
        source = query.get("source", "")
        if source and source not in SOURCE_FIELDS:
            raise Refused(400, f"no source {source[:40]!r}")
        since = _day(query.get("since", ""), "since")
        before = _cursor(query.get("before", ""))
        rows = await self.relay.store.events(
            [status], source or None, since, PAGE + 1, before=before
        )
        more = len(rows) > PAGE
        rows = rows[:PAGE]
        params = {k: v for k, v in query.items() if k != "before" and v}
        older = None
        if more and rows:
            older = {**params, "before": f"{rows[-1].received_at!r}:{rows[-1].id}"}  # keyset
        return self.render(
            request,
            "events.html",
            session,
            rows=rows,
            status=status,
            source=source,
            since=query.get("since", ""),
            statuses=EVENT_FILTERS,
            sources=SOURCE_FIELDS,
            params=params,
            older=older,
            paged=before is not None,
        )

    async def event(self, request: Request, session: Session) -> Response:
        store = self.relay.store
        event_row = int(request.path_params["id"])
        found = await store.events(ids=[event_row], limit=1, with_body=True)
        if not found:
            raise Refused(404, f"There is no stored event {event_row}.")
        event = found[0]
        conversions: list[Any] = []
        reading = ""
        if event.status == ACCEPTED and event.body:
            # Its conversions, found by the order keys its body reads as today.
            if event.source in self.relay.sources:
                try:
                    read = self.relay.intake.read(event.source, event.body)
                except Exception:  # noqa: BLE001 - whatever the parser says, the page stands
                    read = None
                for c in read.conversions if read is not None else []:
                    conversions += await store.find_conversions(
                        [event.source], order_key=c.order_key
                    )
            else:
                reading = f"source {event.source} is not configured now"
        return self.render(
            request,
            "event.html",
            session,
            event=event,
            raw=_raw_text(event.body),
            conversions=conversions,
            reading=reading,
        )

    async def replay(
        self, request: Request, session: Session, form: dict[str, list[str]]
    ) -> Response:
        """`relay replay ID…`: the same selection and replay code."""
        ids = [_int(v, "id") for v in form.get("id", [])]
        wanted = [i for i in ids if i is not None]
        if not wanted:
            raise Refused(400, "Replay needs at least one event id.")
        if len(wanted) > 500:
            raise Refused(400, "Replay at most 500 events at once.")
        back = self._back(request, form, "/events")
        intake = self.relay.intake
        try:
            selected = await replaying.select(intake, wanted, [], None, None)
        except ConfigError as exc:
            raise Refused(404, str(exc)) from None
        lines: list[str] = []
        summary = await replaying.replay(intake, selected, time.time(), False, lines.append)
        if summary.deliveries:
            self._wake()
        root = self.root(request)
        shown = [(replaying.summarize(summary, False), "")]
        for line in lines:  # "#12 stripe evt_… : …" (relay.replay.describe): linked to event 12
            number = line[1:].split(" ", 1)[0] if line.startswith("#") else ""
            shown.append((line, f"{root}/events/{number}" if number.isdigit() else ""))
        return self._done(request, session, back, shown)


def _enabled_line(state: DisabledDestination) -> str:
    since = datetime.fromtimestamp(state.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"{state.destination} is enabled again (disabled since {since}: {state.reason[:120]});"
        " its waiting deliveries go out now."
    )


def _url(path: str, params: dict[str, Any]) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return path + (f"?{urlencode(kept)}" if kept else "")


def _raw_text(body: bytes | None) -> str | None:
    """A stored raw body to show: pretty-printed JSON, else the text as received."""
    if body is None:
        return None
    return pretty_json(body) or body.decode("utf-8", errors="replace")


def build(relay: Relay) -> ASGIApp:
    return Console(relay).app()


__all__ = ["Console", "build"]
