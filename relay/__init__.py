"""relay: payment-processor webhooks in, conversions out, exactly once per destination."""

__version__ = "0.1.0"
