"""Settings: environment (RELAY_ prefix, __ nesting) over an optional TOML file over defaults.

`load_settings()` is the one entry point; it turns every validation problem into
a ConfigError that names the environment variable to fix. Secrets are SecretStr
and are shown masked by `describe()`.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
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


class StripeSettings(_Section):
    required: ClassVar = ("webhook_secrets",)
    webhook_secrets: SecretCSV = []
    api_key: SecretStr | None = None
    api_base: str = "https://api.stripe.com"
    tolerance_seconds: int = Field(300, ge=1, le=86400)
    sandbox: bool = False

    _csv = field_validator("webhook_secrets", mode="before")(_split_csv)


class LemonSqueezySettings(_Section):
    required: ClassVar = ("signing_secret",)
    signing_secret: SecretCSV = []  # several allowed while rotating
    sandbox: bool = False

    _csv = field_validator("signing_secret", mode="before")(_split_csv)


class PaddleSettings(_Section):
    required: ClassVar = ("webhook_secrets",)
    webhook_secrets: SecretCSV = []
    api_key: SecretStr | None = None
    api_base: str = "https://api.paddle.com"
    tolerance_seconds: int = Field(300, ge=1, le=86400)
    sandbox: bool = False

    _csv = field_validator("webhook_secrets", mode="before")(_split_csv)


class ChargebeeSettings(_Section):
    required: ClassVar = ("username", "password")
    username: str | None = None
    password: SecretStr | None = None
    sandbox: bool = False


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
    kinds: CSV = ["purchase", "subscription_renewed"]


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
DESTINATION_FIELDS = ("simmer", "impact", "pagent", "topmail", "converge", "webhook")


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

    worker: WorkerSettings = WorkerSettings()
    attribution: AttributionSettings = AttributionSettings()

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
                return int(raw)
            except ValueError:
                raise ConfigError(f"PORT must be a number, got {raw[:20]!r}") from None
        return 8000

    def enabled_sources(self) -> list[str]:
        return [name for name in SOURCE_FIELDS if getattr(self, name).enabled]

    def enabled_destinations(self) -> list[str]:
        return [name for name in DESTINATION_FIELDS if getattr(self, name).enabled]

    def check(self) -> None:
        """Cross-field rules: a half-configured source or destination is an error."""
        for name in (*SOURCE_FIELDS, *DESTINATION_FIELDS):
            section: _Section = getattr(self, name)
            missing = section.missing()
            if missing:
                have = [f for f in section.required if f not in missing]
                raise ConfigError(
                    f"{env_name(name, missing[0])} is required when "
                    f"{env_name(name, have[0])} is set"
                )
        if not self.store_url.startswith(("sqlite://", "postgresql://")):
            raise ConfigError(
                "RELAY_DATABASE_URL must start with sqlite:/// or postgresql:// "
                f"(got scheme {self.store_url.split(':', 1)[0]!r})"
            )
        self.listen_port  # noqa: B018 - validates PORT

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
    """Load and validate; any problem becomes a ConfigError naming the variable."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if not isinstance(p, int)] or ["?"]
        msg = err["msg"]
        raise ConfigError(f"{env_name(*loc)}: {msg}") from None
    except ConfigError:
        raise
    except Exception as exc:  # TOML syntax errors and the like
        raise ConfigError(f"cannot load configuration: {exc}") from None
    settings.check()
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
