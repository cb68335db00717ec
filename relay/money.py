"""Exact money: minor units ⇄ major units by currency exponent, with Decimal only.

ISO 4217 gives each currency an exponent. Processors do not always follow it
(Stripe keeps ISK and HUF as two-decimal in its API; Chargebee never scales
zero-decimal currencies), so each source says which exponent its integers use
by calling `from_minor(amount, currency, exponent=...)` or relying on ISO.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal

from relay.errors import PayloadError

ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())

# Active ISO 4217 codes (list one, 2026). A code outside this set is a 400.
ISO_4217 = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD
    BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP
    DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR
    IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD
    MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB
    PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD
    SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS
    VED VES VND VUV WST XAF XAG XAU XBA XBB XBC XBD XCD XCG XDR XOF XPD XPF XPT XSU XUA YER
    ZAR ZMW ZWG ZWL
    """.split()
)


def currency_code(raw: object) -> str:
    """Validate and uppercase a currency code ('jpy' → 'JPY'); unknown codes raise PayloadError."""
    if not isinstance(raw, str):
        raise PayloadError("currency is missing")
    code = raw.strip().upper()
    if code not in ISO_4217:
        raise PayloadError(f"unknown currency code {raw[:8]!r}")
    return code


def exponent(currency: str) -> int:
    """ISO 4217 minor-unit exponent as relay uses it: 0, 3 or 2."""
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


MAX_MINOR_DIGITS = 18  # far above any real amount, well inside Decimal's 28-digit precision
_INTEGER = re.compile(rf"-?[0-9]{{1,{MAX_MINOR_DIGITS}}}", re.ASCII)


def from_minor(amount: object, currency: str, exp: int | None = None) -> Decimal:
    """Integer (or integer string) minor units → exact Decimal major units.

    `exp` overrides the ISO exponent when the processor uses another scale.
    Anything but a finite integer of at most MAX_MINOR_DIGITS digits ("Infinity",
    "NaN", "1e999999999", "12.5", 1.5, 10**19) is a PayloadError.
    """
    if isinstance(amount, bool) or amount is None:
        raise PayloadError("amount is missing")
    if isinstance(amount, str) and _INTEGER.fullmatch(amount.strip()):
        minor = int(amount.strip())
    elif isinstance(amount, int):
        minor = amount
    else:
        raise PayloadError(f"amount {str(amount)[:20]!r} is not an integer of minor units")
    if abs(minor) >= 10**MAX_MINOR_DIGITS:
        raise PayloadError(f"amount has more than {MAX_MINOR_DIGITS} digits")
    places = exponent(currency) if exp is None else exp
    return Decimal(minor).scaleb(-places).quantize(Decimal(1).scaleb(-places))


def to_minor(amount: Decimal, currency: str) -> int:
    """Decimal major units → integer minor units at the ISO exponent.

    Exact for every amount a source produces; a value with more decimals than the
    currency has (only possible from arithmetic) is rounded half-up."""
    return int(amount.scaleb(exponent(currency)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def fmt(amount: Decimal, places: int | None = None) -> str:
    """Plain decimal text ('800', '12.50'), never exponent notation."""
    if places is not None:
        amount = amount.quantize(Decimal(1).scaleb(-places))
    return format(amount, "f")
