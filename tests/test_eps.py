"""The one eps grammar (marginkit.norms.parse_eps / parse_radius)."""

import math

import pytest

from marginkit.norms import parse_eps, parse_radius


def test_numbers_fractions_and_lists():
    assert parse_eps("8/255") == [8 / 255]
    assert parse_eps("0.5") == [0.5] and parse_eps(2) == [2.0] and parse_eps(0.25) == [0.25]
    assert parse_eps("2/255, 4/255,0.1,") == [2 / 255, 4 / 255, 0.1]
    assert parse_eps(["1/2", 3]) == [0.5, 3.0]
    assert parse_radius(" 16/255 ") == 16 / 255


@pytest.mark.parametrize("bad", ["", "a", "1/0", "-0.1", "inf", "nan", "1/x", True, [], ","])
def test_bad_radii_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="eps"):
        parse_eps(bad)


def test_parse_radius_wants_exactly_one():
    with pytest.raises(ValueError, match="one radius"):
        parse_radius("0.1,0.2")
    assert math.isclose(parse_radius(1), 1.0)
