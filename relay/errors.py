"""The exceptions relay raises, and what each one means to a caller.

    RelayError
    ├── ConfigError      the configuration is invalid: `relay` refuses to start
    ├── SignatureError   a webhook failed verification: 400 (401 for Basic auth), nothing stored
    ├── PayloadError     a verified webhook cannot be understood: 400, nothing stored
    ├── StoreError       the ledger cannot be read or written: 503, the processor retries
    └── EnrichmentUnavailable  a worker-side look-up (e.g. Paddle's customer email) failed
                         for now: the delivery is retried later, not sent without it

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
    """The verified body is malformed or carries values relay cannot relay exactly."""


class StoreError(RelayError):
    """The store failed; nothing was committed."""


class EnrichmentUnavailable(RelayError):
    """A look-up the delivery needs failed transiently; retry the delivery later."""
