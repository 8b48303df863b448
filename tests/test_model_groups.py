"""model/groups.py: one group vocabulary; clear errors naming the bad value and the allowed groups; every module
that takes a group name uses it."""
from __future__ import annotations

import pytest

from model.equivariance import group_elements
from model.groups import (CONTINUOUS_GROUPS, GROUPS, MOMENT_GROUPS, check_group, group_name, group_order,
                          normalize_group, parse_group)
from model.moment import MomentConv2d, MomentUNet
from model.moment.fields import FieldType


def test_parse_and_name_round_trip():
    for g in GROUPS:
        assert group_name(*parse_group(g)) == g
    assert parse_group(" d4 ") == ("D", 4) and parse_group("c16") == ("C", 16) and parse_group("D16") == ("D", 16)
    assert parse_group("SO2") == ("C", 0) and parse_group("o2") == ("D", 0)
    assert set(CONTINUOUS_GROUPS) <= set(GROUPS) and set(MOMENT_GROUPS) <= set(GROUPS)
    assert [group_order(g) for g in ("C1", "C8", "D1", "D4", "D16")] == [1, 8, 2, 8, 32]
    with pytest.raises(ValueError, match="infinite"):
        group_order("SO2")


@pytest.mark.parametrize("bad", ["X4", "C0", "D", "4", "", "SO3"])
def test_unknown_group_names_the_value_and_the_supported_ones(bad):
    with pytest.raises(ValueError) as e:
        parse_group(bad)
    assert repr(bad) in str(e.value) and ", ".join(GROUPS) in str(e.value) and "any CN or DN" in str(e.value)
    with pytest.raises(ValueError, match="unknown group"):
        group_elements(bad)


def test_check_group_for_a_model_with_few_groups():
    assert check_group(" c4", MOMENT_GROUPS, "MomentUNet") == "C4" == normalize_group("c4 ")
    for make in (lambda: MomentUNet(group="C8"), lambda: MomentConv2d(FieldType(1, 0), FieldType(1, 0), group="D8")):
        with pytest.raises(ValueError) as e:
            make()
        assert "unknown group" in str(e.value) and "D4, C4" in str(e.value)


def test_group_elements_follow_the_parsed_group():
    assert [len(group_elements(g)) for g in ("C1", "C4", "D4", "D8", "SO2", "O2")] == [1, 4, 8, 16, 16, 32]
    assert [e.name for e in group_elements("d2")] == ["e", "rot180", "flip", "rot180*flip"]
