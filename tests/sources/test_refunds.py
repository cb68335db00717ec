"""relay.refunds: a cumulative refund conversion → the amount this event refunded."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from relay.conversion import PURCHASE, REFUND, Conversion
from relay.refunds import CUMULATIVE_REF, cumulative_key, earlier_prefix, refund_delta

WHEN = datetime(2026, 1, 2, tzinfo=UTC)


def cumulative(total: str, of: str = "order-1", minor: int | None = None) -> Conversion:
    amount = Decimal(total)
    minor = int(amount * 100) if minor is None else minor
    return Conversion(source="lemonsqueezy", kind=REFUND, order_key=cumulative_key(of, minor),
                      occurred_at=WHEN, currency="USD", total=amount, tax=Decimal("1.00"),
                      refs={CUMULATIVE_REF: of, "refunded_of": of.split("-")[-1]})


def test_keys_and_prefix():
    conv = cumulative("15.00")
    assert conv.order_key == "order-1:refund:1500"
    assert earlier_prefix(conv) == "order-1:refund:"
    # "order-1:refund:" is not a prefix of order 12's refunds.
    assert not cumulative("5.00", of="order-12").order_key.startswith(earlier_prefix(conv))


def test_first_then_partial_then_out_of_order():
    first = refund_delta(cumulative("10.00"), [])
    assert first is not None and first.total == Decimal("10.00")
    second = refund_delta(cumulative("15.00"), [first.total])
    assert second is not None and second.total == Decimal("5.00")
    assert second.refs["cumulative_refunded"] == "15.00"
    assert second.refs[CUMULATIVE_REF] == "order-1"  # still found by the next query
    assert second.tax is None and second.order_key == "order-1:refund:1500"
    # An older cumulative amount delivered late, or an equal one: nothing new.
    assert refund_delta(cumulative("12.00"), [first.total, second.total]) is None
    assert refund_delta(cumulative("15.00"), [Decimal("15.00")]) is None


def test_out_of_order_larger_first():
    larger = refund_delta(cumulative("15.00"), [])
    assert larger is not None and larger.total == Decimal("15.00")
    assert refund_delta(cumulative("10.00"), [larger.total]) is None


def test_other_conversions_pass_through():
    plain = Conversion(source="stripe", kind=REFUND, order_key="re_1", occurred_at=WHEN,
                       currency="USD", total=Decimal("5.00"))
    assert earlier_prefix(plain) is None and refund_delta(plain, [Decimal("99")]) is plain
    purchase = Conversion(source="lemonsqueezy", kind=PURCHASE, order_key="order-1",
                          occurred_at=WHEN, refs={CUMULATIVE_REF: "order-1"})
    assert refund_delta(purchase, []) is purchase


def test_three_decimal_currency_is_exact():
    conv = Conversion(source="lemonsqueezy", kind=REFUND, order_key="order-9:refund:1500",
                      occurred_at=WHEN, currency="KWD", total=Decimal("1.500"),
                      refs={CUMULATIVE_REF: "order-9"})
    delta = refund_delta(conv, [Decimal("0.250")])
    assert delta is not None and str(delta.total) == "1.250"


def test_missing_total_is_a_programming_error():
    conv = cumulative("1.00").replace(total=None)
    with pytest.raises(ValueError):
        refund_delta(conv, [])
