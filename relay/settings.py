"""Settings: environment (RELAY_ prefix, __ nesting) over an optional TOML file over defaults.

`load_settings()` is the one entry point; it turns every validation problem into
a ConfigError that names the environment variable to fix. Secrets are SecretStr
and are shown masked by `describe()`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from relay.conversion import ATTRIBUTION_KEYS, KINDS
from relay.errors import ConfigError

CSV = Annotated[list[str], NoDecode]
FloatCSV = Annotated[list[float], NoDecode]
SecretCSV = Annotated[list[SecretStr], NoDecode]


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _Section(BaseModel):
    model_config = {"extra": "forbid"}

    # Fields that must all be set to enable the section (the first one switches it on).
    required: ClassVar[tuple[str, ...]] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.required) and all(_is_set(getattr(self, f)) for f in self.required)

    def missing(self) -> list[str]:
        if not any(_is_set(getattr(self, f)) for f in self.required):
            return []
        return [f for f in self.required if not _is_set(getattr(self, f))]


def _is_set(value: Any) -> bool:
    if isinstance(value, SecretStr):
        return bool(value.get_secret_value())
    return value not in (None, "", [])


# ---------------------------------------------------------------- sources


class SourceSettings(_Section):
    """What every source takes besides its webhook secrets: reconcile from the processor's API
    (relay/reconcile.py). With an interval > 0 the worker re-reads the processor's API for
    [last run − overlap, now − delay] every interval: the delay leaves webhooks still being
    retried their chance to arrive first (they carry more than the API, e.g. Lemon Squeezy's
    custom_data), the overlap catches events the API listed late."""

    reconcile_interval_seconds: float = Field(0, ge=0, le=7 * 86400)  # 0 = off
    reconcile_overlap_seconds: float = Field(600, ge=0, le=7 * 86400)
    reconcile_delay_seconds: float = Field(300, ge=0, le=86400)

    # The settings the processor's API client needs (env names relative to the section).
    api_required: ClassVar[tuple[str, ...]] = ("api_key",)

    def api_missing(self) -> list[str]:
        return [f for f in self.api_required if not _is_set(getattr(self, f))]


class StripeSettings(SourceSettings):
    required: ClassVar = ("webhook_secrets",)
    webhook_secrets: SecretCSV = []
    api_key: SecretStr | None = None
    api_base: str = "https://api.stripe.com"
    tolerance_seconds: int = Field(300, ge=1, le=86400)
    sandbox: bool = False
    # The attribution id a Checkout Session's client_reference_id holds (Payment Links
    # can carry nothing else), e.g. "irclickid". None: client_reference_id is not used.
    client_reference_id_key: str | None = None

    _csv = field_validator("webhook_secrets", mode="before")(_split_csv)

    @field_validator("client_reference_id_key")
    @classmethod
    def _known_attribution_id(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if value not in ATTRIBUTION_KEYS:
            raise ValueError(
                f"{value[:40]!r} is not an attribution id; known: {', '.join(ATTRIBUTION_KEYS)}"
            )
        return value


class LemonSqueezySettings(SourceSettings):
    required: ClassVar = ("signing_secret",)
    signing_secret: SecretCSV = []  # several allowed while rotating
    api_key: SecretStr | None = None  # backfill and reconcile (no events API: orders etc.)
    api_base: str = "https://api.lemonsqueezy.com"
    store_id: int | None = Field(None, ge=1)  # only this store's objects (a key may see several)
    sandbox: bool = False

    _csv = field_validator("signing_secret", mode="before")(_split_csv)


class PaddleSettings(SourceSettings):
    required: ClassVar = ("webhook_secrets",)
    webhook_secrets: SecretCSV = []
    api_key: SecretStr | None = None
    api_base: str = "https://api.paddle.com"
    tolerance_seconds: int = Field(300, ge=1, le=86400)
    sandbox: bool = False

    _csv = field_validator("webhook_secrets", mode="before")(_split_csv)


class ChargebeeSettings(SourceSettings):
    required: ClassVar = ("username", "password")
    api_required: ClassVar = ("site", "api_key")
    username: str | None = None
    password: SecretStr | None = None
    # Backfill and reconcile (Events API): the site name (`acme` in acme.chargebee.com,
    # `acme-test` for a test site) and an API key; api_base defaults to https://{site}.chargebee.com.
    site: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    api_key: SecretStr | None = None
    api_base: str | None = None
    sandbox: bool = False
    # Wrong Basic credentials in a row from one client address before it is answered
    # 429 for a while (1 s, doubling per further failure, at most 60 s at a time).
    max_auth_failures: int = Field(5, ge=1, le=1000)

    @property
    def api_url(self) -> str:
        return self.api_base or f"https://{self.site}.chargebee.com"

    def api_missing(self) -> list[str]:
        missing = super().api_missing()
        return [f for f in missing if not (f == "site" and self.api_base)]


# ---------------------------------------------------------------- destinations


class DestinationSettings(_Section):
    rate_limit_per_minute: int | None = Field(None, ge=0)  # None or 0: no client-side limit
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    max_attempts: int = Field(30, ge=1, le=1000)
    kinds: CSV = list(KINDS)

    _csv = field_validator("kinds", mode="before")(_split_csv)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown conversion kind(s) {unknown}; known: {list(KINDS)}")
        return kinds


class SimmerSettings(DestinationSettings):
    required: ClassVar = ("secret_key", "project_id")
    secret_key: SecretStr | None = None
    project_id: str | None = None
    url: str = "https://app.letsimmer.com/api/conversion"
    rate_limit_per_minute: int | None = Field(50, ge=0)  # documented per-project limit
    kinds: CSV = ["purchase", "subscription_renewed"]


class ImpactSettings(DestinationSettings):
    required: ClassVar = ("account_sid", "auth_token", "campaign_id", "event_type_id")
    account_sid: str | None = None
    auth_token: SecretStr | None = None
    campaign_id: int | None = Field(None, ge=0, le=9_999_999_999)
    event_type_id: int | None = Field(None, ge=0, le=9_999_999_999)
    url: str = "https://api.impact.com"
    # Refunds reverse (in full) or reduce (in part) the purchase's action (Actions API).
    kinds: CSV = ["purchase", "subscription_renewed", "refund"]
    # Follow each submission (QueuedUri) until impact says accepted or rejected: the
    # waits between looks (the last one repeats) and how long to keep looking (impact
    # keeps a submission 90 days). docs/impact.md.
    follow_up: bool = True
    follow_up_seconds: FloatCSV = [60.0, 300.0, 900.0, 3600.0]
    follow_up_hours: float = Field(72.0, gt=0, le=2000)
    # Follow-ups stop while X-RateLimit-Remaining is at or below this, until the reset:
    # the rest of the hourly budget is kept for conversions and reversals.
    follow_up_reserve: int = Field(100, ge=0)
    # The code sent with a reversal (DispositionCode) or reduction (Reason) for a refund.
    refund_reason: str = Field("ITEM_RETURNED", pattern=r"^[A-Z][A-Z0-9_]{0,63}$")

    _floats = field_validator("follow_up_seconds", mode="before")(_split_csv)

    @field_validator("follow_up_seconds")
    @classmethod
    def _waits(cls, waits: list[float]) -> list[float]:
        if not waits:
            raise ValueError("give at least one wait in seconds, e.g. 60,300,900,3600")
        if any(not 0 < w <= 86400 for w in waits):
            raise ValueError("each wait must be more than 0 and at most 86400 seconds")
        return waits


class PagentSettings(DestinationSettings):
    required: ClassVar = ("api_key", "currency")
    api_key: SecretStr | None = None
    url: str = "https://ingest.pagent.ai"
    label: str = Field("purchase", min_length=1, max_length=200)
    # pagent has no currency field: revenue is read in the project's currency, so it
    # must be known; conversions in another currency are skipped, never mis-scaled.
    currency: str | None = Field(None, pattern=r"^[A-Z]{3}$")
    kinds: CSV = ["purchase", "subscription_renewed"]


class TopmailSettings(DestinationSettings):
    required: ClassVar = ("api_key",)
    api_key: SecretStr | None = None
    url: str = "https://api.topmail.so"
    subscription_type: Literal["signup", "upgrade"] = "signup"
    attribution_model: Literal["last_touch", "first_touch", "linear"] = "last_touch"
    attribution_window: int = Field(7, ge=1, le=90)
    kinds: CSV = ["purchase", "subscription_started", "subscription_renewed"]


class ConvergeSettings(DestinationSettings):
    required: ClassVar = ("postback_url",)
    postback_url: SecretStr | None = None  # the URL itself is the secret
    webhook_token: SecretStr | None = None  # sent as X-Webhook-Token when set
    new_customer_default: bool = True  # $is_new_customer when the ledger cannot tell
    # Converge documents no refund event: refunds are not sent by default.
    kinds: CSV = [
        "purchase",
        "subscription_started",
        "subscription_renewed",
        "subscription_cancelled",
    ]


class WebhookSettings(DestinationSettings):
    required: ClassVar = ("url", "secret")
    url: str | None = None
    secret: SecretStr | None = None  # whsec_<base64 of 24–64 random bytes>
    timeout_seconds: float = Field(15.0, gt=0, le=300)  # Standard Webhooks: 15–30 s

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return value
        raw = value.get_secret_value()
        if not raw.startswith("whsec_"):
            raise ValueError("must start with whsec_ (Standard Webhooks secret)")
        try:
            key = base64.b64decode(raw[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the part after whsec_ must be base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError("must decode to 24-64 bytes (Standard Webhooks)")
        return value


class MetaSettings(DestinationSettings):
    """Meta Conversions API (relay/destinations/meta.py). The token is sent in the
    request body, never in the URL, so no log line or error can carry it."""

    required: ClassVar = ("pixel_id", "access_token")
    pixel_id: str | None = Field(None, pattern=r"^[0-9]{1,32}$")  # the dataset / pixel id
    access_token: SecretStr | None = None
    test_event_code: str | None = Field(None, max_length=64)  # Events Manager → Test events
    url: str = "https://graph.facebook.com"
    api_version: str = Field("v25.0", pattern=r"^v[0-9]{1,3}\.[0-9]{1,2}$")
    kinds: CSV = ["purchase", "subscription_started", "subscription_renewed"]


class GA4Settings(DestinationSettings):
    """GA4 Measurement Protocol (relay/destinations/ga4.py). Google takes the API
    secret only in the query string: relay masks it wherever a URL is shown."""

    required: ClassVar = ("measurement_id", "api_secret")
    measurement_id: str | None = Field(None, pattern=r"^G-[A-Z0-9]{4,20}$")
    api_secret: SecretStr | None = None
    url: str = "https://www.google-analytics.com"
    kinds: CSV = ["purchase", "subscription_renewed", "refund"]


# ---------------------------------------------------------------- process


class WorkerSettings(BaseModel):
    model_config = {"extra": "forbid"}
    concurrency: int = Field(32, ge=1, le=1024)
    batch_size: int = Field(64, ge=1, le=1000)
    lease_seconds: float = Field(60, gt=0)
    poll_seconds: float = Field(5, gt=0)
    shutdown_grace_seconds: float = Field(10, ge=0)
    retry_base_seconds: float = Field(5, gt=0)
    retry_max_seconds: float = Field(3600, gt=0)
    retry_after_max_seconds: float = Field(3600, gt=0)


class AttributionSettings(BaseModel):
    """Which metadata key each attribution id is read from (canonical name → key)."""

    model_config = {"extra": "forbid"}
    keys: dict[str, str] = Field(default_factory=lambda: {k: k for k in ATTRIBUTION_KEYS})
    pagent_object_key: str = "pagent"
    # Attribution memory: the ids of a customer's first (or latest) conversion that had
    # any are applied to their later renewals, cancellations and refunds that carry none.
    memory: Literal["first", "last", "off"] = "first"

    @field_validator("keys", mode="before")
    @classmethod
    def _merge_defaults(cls, value: Any) -> Any:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(ATTRIBUTION_KEYS))
            if unknown:
                raise ValueError(f"unknown attribution id(s) {unknown}")
            return {**{k: k for k in ATTRIBUTION_KEYS}, **value}
        return value


URL_FIELDS = frozenset({"url", "api_base"})
SOURCE_FIELDS = ("stripe", "lemonsqueezy", "paddle", "chargebee")
DESTINATION_FIELDS = (
    "simmer",
    "impact",
    "pagent",
    "topmail",
    "converge",
    "webhook",
    "meta",
    "ga4",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RELAY_",
        env_nested_delimiter="__",
        extra="ignore",
        case_sensitive=False,
    )

    database_url: str | None = None
    host: str = "0.0.0.0"  # noqa: S104 - a service meant to be reached
    port: int | None = Field(None, ge=1, le=65535)
    admin_token: SecretStr | None = None
    deliver_test_events: bool = False
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # What unauthenticated clients can hold (README "Limits"): the bodies being read at
    # once, in bytes (past it: 503 + Retry-After); how long a body may take to arrive
    # (408) and headers to complete (connection closed); open connections (uvicorn's
    # limit_concurrency, 503 past it); the reverse proxies whose X-Forwarded-For is
    # believed (addresses or CIDRs, "*" for any; none by default).
    max_inflight_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    body_timeout_seconds: float = Field(10.0, gt=0, le=600)
    header_timeout_seconds: float = Field(5.0, gt=0, le=600)
    max_connections: int = Field(1000, ge=1)
    trusted_proxies: CSV = []
    # personal data of settled records older than this many days is erased; 0 keeps it
    retention_days: int = Field(30, ge=0, le=36500)
    log_level: str = "INFO"

    stripe: StripeSettings = StripeSettings()
    lemonsqueezy: LemonSqueezySettings = LemonSqueezySettings()
    paddle: PaddleSettings = PaddleSettings()
    chargebee: ChargebeeSettings = ChargebeeSettings()

    simmer: SimmerSettings = SimmerSettings()
    impact: ImpactSettings = ImpactSettings()
    pagent: PagentSettings = PagentSettings()
    topmail: TopmailSettings = TopmailSettings()
    converge: ConvergeSettings = ConvergeSettings()
    webhook: WebhookSettings = WebhookSettings()
    meta: MetaSettings = MetaSettings()
    ga4: GA4Settings = GA4Settings()

    worker: WorkerSettings = WorkerSettings()
    attribution: AttributionSettings = AttributionSettings()

    _csv = field_validator("trusted_proxies", mode="before")(_split_csv)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # -- derived values

    @property
    def store_url(self) -> str:
        url = self.database_url or os.environ.get("DATABASE_URL") or "sqlite:///relay.db"
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        return url

    @property
    def listen_port(self) -> int:
        if self.port is not None:
            return self.port
        raw = os.environ.get("PORT")
        if raw:
            try:
                port = int(raw)
            except ValueError:
                raise ConfigError(f"PORT must be a number, got {raw[:20]!r}") from None
            if not 1 <= port <= 65535:
                raise ConfigError(f"PORT must be a port number from 1 to 65535, got {port}")
            return port
        return 8000

    def enabled_sources(self) -> list[str]:
        return [name for name in SOURCE_FIELDS if getattr(self, name).enabled]

    def enabled_destinations(self) -> list[str]:
        return [name for name in DESTINATION_FIELDS if getattr(self, name).enabled]

    def check(self) -> None:
        """Cross-field and value rules (half-configured sections, URLs, ports, placeholder
        text, the database URL): every problem at once, in one ConfigError."""
        found = [text for _, text in value_problems(self)]
        if found:
            raise ConfigError(_summary(found))

    def describe(self) -> dict[str, Any]:
        """Everything `relay check` prints, secrets masked."""
        out: dict[str, Any] = {
            "database": mask_url(self.store_url),
            "port": self.listen_port,
            "deliver_test_events": self.deliver_test_events,
            "sources": {},
            "destinations": {},
        }
        for kind, names in (("sources", SOURCE_FIELDS), ("destinations", DESTINATION_FIELDS)):
            for name in names:
                section = getattr(self, name)
                if section.enabled:
                    out[kind][name] = {
                        k: mask_url(v) if k in URL_FIELDS and isinstance(v, str) else _mask(v)
                        for k, v in section.model_dump().items()
                    }
        return out


def env_name(*path: str | int) -> str:
    return "RELAY_" + "__".join(str(p).upper() for p in path)


def config_file() -> Path | None:
    explicit = os.environ.get("RELAY_CONFIG_FILE")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"RELAY_CONFIG_FILE points to {explicit!r}, which is not a file")
        return path
    default = Path("relay.toml")
    return default if default.is_file() else None


def load_settings(**overrides: Any) -> Settings:
    """Load and validate; every problem becomes one line of a single ConfigError.

    The lines name the variable (or relay.toml key) to fix: unknown RELAY_* variables
    and relay.toml keys that look like typos of a real setting, a TOML syntax error
    with its line, values the models refuse, every missing setting of every
    half-configured section, and the value rules of `value_problems`.
    """
    report = _Report(os.environ)
    report.unknown_variables()
    try:
        path = config_file()
    except ConfigError as exc:
        report.add(("config_file",), str(exc))
        report.raise_if_any()
        raise  # unreachable: raise_if_any raised
    if path is not None and not report.read_toml(path):
        report.raise_if_any()
    invalid: set[tuple[str, ...]] = set()
    try:
        settings: Settings | None = Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if isinstance(p, str)) or ("?",)
            invalid.add(_field_loc(loc))
            if err["type"] == "extra_forbidden" and loc in report.locs:
                continue  # already named as a likely typo, with a suggestion
            msg = err["msg"].removeprefix("Value error, ")
            report.add(loc, f"{report.where(*loc)}: {msg}")
        settings = _without(invalid, overrides)
    except ConfigError:
        raise
    except Exception as exc:  # a source that cannot be read
        raise ConfigError(f"cannot load configuration: {exc}") from None
    if settings is not None:
        for loc, text in value_problems(settings, invalid, report.where):
            report.add(loc, text)
    report.raise_if_any()
    assert settings is not None  # noqa: S101 - no problem means the first pass validated
    return settings


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else ""
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def mask_url(url: str) -> str:
    """A URL fit to print: password and query values hidden."""
    if url.startswith("sqlite:"):
        return url  # a file path holds no secret
    parts = urlsplit(url)
    if "@" not in parts.netloc and not parts.query:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        netloc = f"{user}:********@{host}" if ":" in creds else f"{user}@{host}"
    query = "&".join(
        f"{pair.split('=', 1)[0]}=********" if "=" in pair else pair
        for pair in parts.query.split("&")
        if pair
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# ---------------------------------------------------------------- validation
#
# Every rule below is derived from the models (field names, types, `required`), so a
# setting added later is covered without being listed here.

# RELAY_* variables that are not settings: relay reads the first; the test suite the
# others (and any RELAY_TEST_*). They are never reported as unknown.
OTHER_VARIABLES = frozenset({"RELAY_CONFIG_FILE", "RELAY_SHARED_DIR"})
OTHER_PREFIXES = ("RELAY_TEST_",)
# Text left from a template: "simmer_sk_…", "<your key>", "proj_...".
PLACEHOLDER = re.compile(r"…|\.\.\.|<[^<>]*>")
# Secrets a client can guess against relay itself (nothing signs the body): minimum length.
MIN_SECRET_LENGTH: dict[tuple[str, ...], int] = {("chargebee", "password"): 16}
# How close an unknown name must be to a setting to be called a typo of it (difflib ratio).
TYPO_CUTOFF = 0.8


def is_url_field(name: str) -> bool:
    """Settings holding a destination or API URL (https only, http for loopback)."""
    return name in ("url", "api_base") or name.endswith(("_url", "_api_base"))


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_mapping(annotation: Any) -> bool:
    return any(
        candidate is dict or get_origin(candidate) is dict
        for candidate in (annotation, *get_args(annotation))
    )


def setting_paths(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], str]:
    """Every path that can be set: ("simmer",) → "section", ("simmer", "url") → "leaf",
    ("attribution", "keys") → "mapping" (any key below it is the mapping's business)."""
    out: dict[tuple[str, ...], str] = {}
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        sub = _model_of(field.annotation)
        if sub is not None:
            out[path] = "section"
            out.update(setting_paths(sub, path))
        else:
            out[path] = "mapping" if _is_mapping(field.annotation) else "leaf"
    return out


def _field_loc(loc: tuple[str, ...]) -> tuple[str, ...]:
    """The setting a validation error is about: its section and field, at most."""
    return loc[:2] if len(loc) >= 2 and loc[0] in Settings.model_fields else loc[:1]


def _summary(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems:\n" + "\n".join(f"  {p}" for p in problems)


class _Report:
    """The problems found so far, each with the setting (loc) it is about."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.env_names = {name.upper() for name in environ}
        self.problems: list[str] = []
        self.locs: set[tuple[str, ...]] = set()
        self.toml_path: Path | None = None
        self.toml: dict[str, Any] = {}

    def add(self, loc: tuple[str, ...], text: str) -> None:
        self.locs.add(loc)
        self.problems.append(text)

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(_summary(self.problems))

    def where(self, *loc: str) -> str:
        """The variable to fix, or the relay.toml key when the value came from the file."""
        name = env_name(*loc)
        if self.toml_path is None or name in self.env_names:
            return name
        node: Any = self.toml
        for part in loc:
            if not isinstance(node, dict) or part not in node:
                return name
            node = node[part]
        key = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else loc[0]
        return f"{self.toml_path} {key}"

    def unknown_variables(self) -> list[str]:
        """Report RELAY_* variables that are no setting; return the harmless ones.

        A name in a known section (RELAY_SIMMER__SECRETKEY) or close to a setting
        (RELAY_SIMER__SECRET_KEY) is a typo that would silently leave something off:
        a problem. A name like no setting at all is probably another program's:
        returned, for a warning."""
        paths = setting_paths(Settings)
        leaves = {env_name(*p): p for p, kind in paths.items() if kind != "section"}
        harmless: list[str] = []
        for raw in sorted(self.environ):
            name = raw.upper()
            if not name.startswith("RELAY_") or name in OTHER_VARIABLES:
                continue
            if name.startswith(OTHER_PREFIXES):
                continue
            parts = tuple(name[len("RELAY_") :].lower().split("__"))
            if parts in paths or any(
                paths.get(parts[:i]) == "mapping" for i in range(1, len(parts))
            ):
                continue
            section = parts[0] if paths.get(parts[:1]) == "section" else None
            names = [n for n, p in leaves.items() if section is None or p[0] == section]
            match = difflib.get_close_matches(
                name[len("RELAY_") :], [n[len("RELAY_") :] for n in names], 1, TYPO_CUTOFF
            )
            if match:
                self.add(parts, f"{raw}: no such setting; did you mean RELAY_{match[0]}?")
            elif section is not None:
                self.add(
                    parts,
                    f"{raw}: no such setting; the {section} settings are " + ", ".join(names),
                )
            else:
                harmless.append(raw)
        return harmless

    def read_toml(self, path: Path) -> bool:
        """Parse the file, reporting a syntax error with its line and every unknown
        section or key; False when it cannot be read at all."""
        try:
            self.toml = tomllib.loads(path.read_bytes().decode("utf-8"))
        except OSError as exc:
            self.add(("config_file",), f"{path}: cannot be read ({exc.strerror})")
            return False
        except UnicodeDecodeError:
            self.add(("config_file",), f"{path}: is not UTF-8 text")
            return False
        except tomllib.TOMLDecodeError as exc:
            text = str(exc)
            at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", text)
            if at:
                text = f"line {at[1]}, column {at[2]}: {text[: at.start()]}"
            self.add(("config_file",), f"{path}: TOML syntax error, {text}")
            return False
        self.toml_path = path
        self._unknown_keys(self.toml, Settings, ())
        return True

    def _unknown_keys(
        self, data: dict[str, Any], model: type[BaseModel], prefix: tuple[str, ...]
    ) -> None:
        fields = model.model_fields
        for key, value in data.items():
            loc = (*prefix, key)
            field = fields.get(key)
            if field is not None:
                sub = _model_of(field.annotation)
                if sub is not None and isinstance(value, dict):
                    self._unknown_keys(value, sub, loc)
                continue
            table = not prefix and isinstance(value, dict)
            match = difflib.get_close_matches(key, list(fields), 1, TYPO_CUTOFF)
            if table:
                what, hint = f"[{key}]", match and f"[{match[0]}]"
                text = f"{self.toml_path}: {what}: no such section"
            else:
                where = f"[{'.'.join(prefix)}] {key}" if prefix else key
                hint = match and match[0]
                text = f"{self.toml_path}: {where}: no such setting"
            if hint:
                text += f"; did you mean {hint}?"
            elif prefix:
                text += f"; the [{'.'.join(prefix)}] settings are " + ", ".join(fields)
            self.add(loc, text)


def settings_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """RELAY_* variables relay ignores because they resemble no setting (likely another
    program's): one line each, for the command line to print as warnings."""
    harmless = _Report(os.environ if environ is None else environ).unknown_variables()
    return [f"{name} is not a relay setting; ignored" for name in harmless]


ADMIN_TOKEN_MIN_LENGTH = 16  # RELAY_ADMIN_TOKEN: long enough that guessing it is hopeless


def value_problems(
    settings: Settings,
    invalid: set[tuple[str, ...]] | frozenset[tuple[str, ...]] = frozenset(),
    where: Any = env_name,
) -> Iterator[tuple[tuple[str, ...], str]]:
    """(loc, problem) for every rule a validated Settings breaks; `invalid` settings were
    already reported (their values are not looked at, but they count as set)."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, _Section):
            yield from _missing(name, value, invalid, where)
        if isinstance(value, SourceSettings) and value.reconcile_interval_seconds > 0:
            for field in value.api_missing():
                yield (
                    (name, field),
                    f"{env_name(name, field)} is required when "
                    f"{where(name, 'reconcile_interval_seconds')} is set: reconcile reads "
                    "the processor's API",
                )
        if isinstance(value, BaseModel):
            for key, item in value:
                if (name, key) not in invalid:
                    yield from _value_rules((name, key), item, where)
        elif (name,) not in invalid and name != "database_url":
            yield from _value_rules((name,), value, where)
    if ("database_url",) not in invalid:
        yield from _database_url_problems(settings)
    token = settings.admin_token.get_secret_value() if settings.admin_token else ""
    if ("admin_token",) not in invalid and 0 < len(token) < ADMIN_TOKEN_MIN_LENGTH:
        yield (
            ("admin_token",),
            f"{where('admin_token')} must be at least {ADMIN_TOKEN_MIN_LENGTH} characters: it"
            " guards the console and /metrics; make one with"
            " python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
        )
    try:
        settings.listen_port  # noqa: B018 - validates PORT
    except ConfigError as exc:
        yield ("port",), str(exc)


def _missing(
    name: str,
    section: _Section,
    invalid: set[tuple[str, ...]] | frozenset[tuple[str, ...]],
    where: Any = env_name,
) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every required setting a half-configured section lacks."""
    given = [f for f in section.required if _is_set(getattr(section, f)) or (name, f) in invalid]
    if not given:
        return
    for field in section.required:
        if field not in given:
            yield (
                (name, field),
                (f"{env_name(name, field)} is required when {where(name, given[0])} is set"),
            )


def _value_rules(
    loc: tuple[str, ...], value: Any, where: Any
) -> Iterator[tuple[tuple[str, ...], str]]:
    key = loc[-1]
    secret = isinstance(value, SecretStr)
    raw = value.get_secret_value() if secret else value
    if raw in (None, "", []):
        return
    if any(PLACEHOLDER.search(text) for text in _texts(value)):
        yield (
            loc,
            (f"{where(*loc)} still holds placeholder text (…, ... or <…>): paste the real value"),
        )
        return
    if is_url_field(key) and isinstance(raw, str):
        problem = url_problem(raw, show_scheme=not secret)
        if problem:
            yield loc, f"{where(*loc)}: {problem}"
    if (key == "port" or key.endswith("_port")) and isinstance(raw, int):
        if not 1 <= raw <= 65535:
            yield loc, f"{where(*loc)}: a port number is 1 to 65535, got {raw}"
    minimum = MIN_SECRET_LENGTH.get(loc)
    if minimum and isinstance(raw, str) and len(raw) < minimum:
        yield (
            loc,
            (
                f"{where(*loc)} must be at least {minimum} characters long, it alone guards the "
                "webhook (make one: python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
            ),
        )


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _texts(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _texts(item)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str, show_scheme: bool = True) -> str | None:
    """Why `url` is not a destination or API URL relay may use, or None.

    https:// with a host; plain http:// only to a loopback host (127.0.0.0/8, ::1,
    localhost), where nothing crosses a network. `show_scheme` is False for a URL that
    is itself a secret (Converge's postback URL): nothing of it is echoed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "is not a URL with a valid port (1-65535)"
    host = parts.hostname or ""
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not host:
        got = f" (got {scheme + '://' if scheme else 'no scheme'})" if show_scheme else ""
        return f"must be an https:// URL{got}"
    if scheme == "http" and not is_loopback(host):
        return "must be https:// (plain http:// is accepted only for 127.0.0.1, ::1 or localhost)"
    if port == 0:
        return "port must be 1 to 65535"
    return None


def _database_url_problems(settings: Settings) -> Iterator[tuple[tuple[str, ...], str]]:
    url = settings.store_url
    name = "RELAY_DATABASE_URL" if settings.database_url else "DATABASE_URL"
    if not settings.database_url and "DATABASE_URL" not in os.environ:
        return  # the default
    if not url.startswith(("sqlite://", "postgresql://")):
        yield (
            ("database_url",),
            (
                f"{name} must start with sqlite:/// or postgresql:// "
                f"(got scheme {url.split(':', 1)[0][:20]!r})"
            ),
        )
        return
    if PLACEHOLDER.search(url):
        yield ("database_url",), f"{name} still holds placeholder text (…, ... or <…>)"
        return
    if url.startswith("postgresql://"):
        try:
            port = urlsplit(url).port
        except ValueError:
            port = 0
        if port == 0:
            yield ("database_url",), f"{name}: the port must be a number from 1 to 65535"


class _Without(PydanticBaseSettingsSource):
    """A settings source with some settings taken out (see _without)."""

    def __init__(
        self, settings_cls: type[BaseSettings], source: PydanticBaseSettingsSource
    ) -> None:
        super().__init__(settings_cls)
        self.source = source

    def _set_current_state(self, state: dict[str, Any]) -> None:
        super()._set_current_state(state)
        self.source._set_current_state(state)

    def _set_settings_sources_data(self, states: dict[str, dict[str, Any]]) -> None:
        super()._set_settings_sources_data(states)
        self.source._set_settings_sources_data(states)

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        data = copy.deepcopy(self.source())
        for loc in _DROP.get():
            node: Any = data
            for part in loc[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(loc[-1], None)
        return data


_DROP: ContextVar[frozenset[tuple[str, ...]]] = ContextVar(
    "relay_settings_drop", default=frozenset()
)


class _Lenient(Settings):
    """Settings read with the invalid ones left out, to find the remaining problems."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources = Settings.settings_customise_sources(
            settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        )
        return tuple(_Without(settings_cls, source) for source in sources)


def _without(drop: set[tuple[str, ...]], overrides: dict[str, Any]) -> Settings | None:
    """Settings as configured minus the `drop` ones (invalid, unknown), or None if that
    still does not validate; only used to report the problems of the rest at once."""
    token = _DROP.set(frozenset(drop))
    try:
        return _Lenient(**overrides)
    except (ValidationError, ConfigError):
        return None
    finally:
        _DROP.reset(token)
