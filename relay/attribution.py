"""Attribution ids picked out of processor metadata under configurable keys."""

from __future__ import annotations

import orjson

from relay.conversion import Conversion
from relay.settings import AttributionSettings

PAGENT_FIELDS = ("session_id", "user_id", "conversion_id", "visit_id")
MAX_LENGTH = 512


def extract(metadata: dict[str, str], settings: AttributionSettings) -> dict[str, str]:
    """Canonical attribution name → value, for the ids present and non-empty."""
    found: dict[str, str] = {}
    blob = metadata.get(settings.pagent_object_key)
    if blob:  # the whole `_pgnt.variables()` object, stored as JSON text
        try:
            obj = orjson.loads(blob)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            for name in PAGENT_FIELDS:
                value = obj.get(name)
                if isinstance(value, str) and value.strip():
                    found[f"pagent_{name}"] = value.strip()
    for canonical, key in settings.keys.items():
        value = metadata.get(key)
        if isinstance(value, str) and value.strip() and len(value) <= MAX_LENGTH:
            found[canonical] = value.strip()
    return found


def attach(conversion: Conversion, settings: AttributionSettings) -> Conversion:
    """The ids found in the metadata; ids the source set itself (a Stripe Checkout
    Session's client_reference_id, RELAY_STRIPE__CLIENT_REFERENCE_ID_KEY) stay where the
    metadata has none of its own."""
    return conversion.replace(
        attribution={**conversion.attribution, **extract(conversion.metadata, settings)}
    )
