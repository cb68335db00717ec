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
