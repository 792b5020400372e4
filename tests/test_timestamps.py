import numpy as np
import pytest

from engine.domain.timestamps import TimestampUnitError, detect_unit, to_ns


@pytest.mark.parametrize(
    "values, unit",
    [([1_700_000_000], "s"), ([1_700_000_000_123], "ms"), ([1_700_000_000_123_456], "us"),
     ([1_700_000_000_123_456_789], "ns"), ([1.7e9 + 0.5], "s")],
)
def test_unit_detected_from_magnitude(values, unit):
    assert detect_unit(np.array(values)) == unit


def test_mixed_or_nonsense_units_are_refused_with_the_range():
    with pytest.raises(TimestampUnitError, match="not one epoch unit"):
        detect_unit(np.array([1_700_000_000, 1_700_000_000_000]))
    with pytest.raises(TimestampUnitError, match="no timestamps"):
        detect_unit(np.array([]))


def test_float_seconds_keep_their_fraction():
    # one float64 product would give ...249999872
    assert to_ns(np.array([1_700_000_000.25]), "s")[0] == 1_700_000_000_250_000_000
    assert to_ns(np.array([1_549_238_400_994]), "ms")[0] == 1_549_238_400_994_000_000


def test_overflow_is_an_error_not_a_wraparound():
    with pytest.raises(TimestampUnitError, match="overflow"):
        to_ns(np.array([1_700_000_000_000_000]), "ms")
