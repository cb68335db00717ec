"""The exceptions relay raises, and what each one means to a caller.

    RelayError
    ├── ConfigError      the configuration is invalid: `relay` refuses to start
    ├── SignatureError   a webhook failed verification: 400 (401 for Basic auth), nothing stored
    ├── PayloadError     a verified JSON object cannot become conversions: quarantined
    │   │                (stored, answered 200 "quarantined", never delivered)
    │   └── NotJSONObject  the verified body is not a JSON object at all: 400, nothing stored
    ├── StoreError       the ledger cannot be read or written: 503, the processor retries
    ├── EnrichmentUnavailable  a processor API look-up failed in a way that may pass
    │                    (transport error, timeout, 429, 5xx): the worker retries the
    │                    delivery later instead of sending it without the data
    └── ProcessorAPIError  a processor API (relay/processors/) refused a request, kept
                         failing after its retries, or answered a page relay cannot read:
                         `relay backfill` exits non-zero, reconcile keeps its mark

Messages never contain a secret, an email address or a full payload.
"""


class RelayError(Exception):
    """Base class of every error relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid; the message names the variable."""


class SignatureError(RelayError):
    """The webhook is not authentic (bad, missing or stale signature)."""

    status_code = 400


class AuthError(SignatureError):
    """Missing or wrong HTTP Basic credentials (Chargebee)."""

    status_code = 401


class PayloadError(RelayError):
    """The verified body is malformed or carries values relay cannot relay exactly.

    `event_id` and `event_type` are set when the envelope was readable before the
    failure (`relay.sources.dispatch` fills them in), so a quarantined event keeps the
    processor's own id."""

    event_id: str | None = None
    event_type: str | None = None


class NotJSONObject(PayloadError):
    """The body is not a JSON object (not JSON, an array, nested beyond the parser's
    limit): no processor sends one, so it is refused with a 400 and stored nowhere."""


class StoreError(RelayError):
    """The store failed; nothing was committed."""


class EnrichmentUnavailable(RelayError):
    """A look-up the delivery needs failed transiently; retry the delivery later.

    Raised by the enricher (relay/enrich.py) for transport errors, timeouts, 429
    and 5xx answers. It is never cached. A definitive answer (404, 401/403) is not
    this error: the conversion then goes out without the extra data.
    `retry_after` is the API's Retry-After in seconds, when it sent one.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProcessorAPIError(RelayError):
    """A processor API call failed; the message names the API's error or the variable to fix.

    `transient` is True when trying again later may pass (transport error, timeout, 429,
    5xx after the client's own retries); `retry_after` is the API's Retry-After then.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # the API's own error code ("invalid_token", "rate_limit"…)
        self.transient = transient
        self.retry_after = retry_after
