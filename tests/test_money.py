from decimal import Decimal

import pytest

from relay import money
from relay.errors import PayloadError


@pytest.mark.parametrize(
    ("minor", "currency", "major"),
    [
        (800, "JPY", "800"),
        (12345, "KWD", "12.345"),
        (5120, "BHD", "5.120"),
        (4900, "USD", "49.00"),
        ("1099", "EUR", "10.99"),  # Paddle sends strings
        (0, "KRW", "0"),
        (100, "ISK", "1.00"),  # Stripe keeps ISK two-decimal in its API
        (-250, "USD", "-2.50"),
    ],
)
def test_from_minor_is_exact(minor, currency, major):
    value = money.from_minor(minor, currency)
    assert value == Decimal(major) and str(value) == major


def test_to_minor_round_trips():
    assert money.to_minor(Decimal("12.345"), "KWD") == 12345
    assert money.to_minor(Decimal("800"), "JPY") == 800
    assert money.to_minor(Decimal("9.99"), "USD") == 999
    assert money.to_minor(Decimal("1.5"), "JPY") == 2  # only arithmetic makes such values


@pytest.mark.parametrize("bad", [1.5, "12.5", None, True, "abc"])
def test_from_minor_refuses_non_integers(bad):
    with pytest.raises(PayloadError):
        money.from_minor(bad, "USD")


def test_currency_codes():
    assert money.currency_code("jpy") == "JPY"
    assert money.exponent("JPY") == 0 and money.exponent("TND") == 3 and money.exponent("EUR") == 2
    for bad in ("XYZ", "", "usdd", None, 840):
        with pytest.raises(PayloadError):
            money.currency_code(bad)


@pytest.mark.parametrize("bad", [
    "Infinity", "-Infinity", "NaN", "sNaN", "1e999999999", "1e3", "12.0", "1_000", "0x10", "",
    "1" * 19, 10**18, -(10**18), "9" * 5000,
])
def test_from_minor_refuses_non_finite_and_huge(bad):
    with pytest.raises(PayloadError):
        money.from_minor(bad, "USD")


def test_from_minor_largest_accepted():
    assert money.from_minor("9" * 18, "KWD") == Decimal("9" * 15 + ".999")
    assert money.from_minor(-(10**18 - 1), "JPY") == -(10**18 - 1)
    assert money.from_minor(" 1099 ", "EUR") == Decimal("10.99")


def test_errors_say_what_is_wrong():
    with pytest.raises(PayloadError, match="^currency is missing$"):
        money.currency_code(None)
    with pytest.raises(PayloadError, match=r"^unknown currency code 'ABCDEFGH'$"):
        money.currency_code("ABCDEFGHIJKL")  # at most 8 characters of what was sent
    with pytest.raises(PayloadError, match="^amount is missing$"):
        money.from_minor(None, "USD")
    with pytest.raises(PayloadError, match=r"^amount '12\.5' is not an integer of minor units$"):
        money.from_minor("12.5", "USD")
    with pytest.raises(PayloadError, match=r"^amount '1\.234567890123456789' is not"):
        money.from_minor("1.2345678901234567890123", "USD")  # 20 characters of it
    with pytest.raises(PayloadError, match="^amount has more than 18 digits$"):
        money.from_minor(10**18, "USD")


def test_the_processor_exponent_overrides_iso():
    # Stripe keeps ISK two-decimal; a processor that never scales JPY sends exponent 0 for it.
    assert str(money.from_minor(12300, "ISK", exp=2)) == "123.00"
    assert str(money.from_minor(100, "JPY", exp=2)) == "1.00"
    assert str(money.from_minor(1000, "USD", exp=0)) == "1000"
    assert str(money.from_minor(5, "KWD", exp=3)) == "0.005"


def test_to_minor_rounds_half_up_not_half_even():
    assert money.to_minor(Decimal("2.5"), "JPY") == 3  # half-even would give 2
    assert money.to_minor(Decimal("0.125"), "USD") == 13
    assert money.to_minor(Decimal("0.0005"), "KWD") == 1
    assert money.to_minor(Decimal("-2.5"), "JPY") == -3


def test_exponents_match_iso_4217_for_the_currencies_relay_scales():
    """relay's own table against the iso4217 package's (an independent list)."""
    from iso4217 import Currency

    for code in ("JPY", "KRW", "VND", "CLP", "XOF", "BHD", "KWD", "JOD", "OMR", "TND", "USD", "EUR", "GBP"):
        assert money.exponent(code) == Currency(code).exponent, code


def test_fmt():
    assert money.fmt(Decimal("800")) == "800"
    assert money.fmt(Decimal("1E+3")) == "1000"  # never exponent notation
    assert money.fmt(Decimal("12.5"), 2) == "12.50"
    assert money.fmt(Decimal("7.005"), 3) == "7.005"
    assert money.fmt(Decimal("0"), 0) == "0"
