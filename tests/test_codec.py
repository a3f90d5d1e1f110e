"""Keys allowed on the wire, and names of places in error messages."""

from __future__ import annotations

from typing import Any

import pytest

from sharedstate.codec import check_key, describe, encode
from sharedstate.errors import InvalidKey, ValueNotPicklable


@pytest.mark.parametrize("key", ["hits", 1, 2.5, b"raw", True, None, ("user", 42), ()])
def test_plain_hashable_keys_are_accepted(key: Any) -> None:
    check_key(key)


@pytest.mark.parametrize("key", [[1], {"a": 1}, {1}, ("ok", [1]), object()])
def test_other_keys_are_refused_clearly(key: Any) -> None:
    with pytest.raises(InvalidKey, match="keys must be"):
        check_key(key)


def test_describe_names_nested_places() -> None:
    assert describe("state", ["cfg", "db", 0]) == "state['cfg']['db'][0]"
    assert describe("state", ["l", slice(1, 3)]) == "state['l'][1:3]"


def test_an_unpicklable_value_is_reported_with_its_place() -> None:
    with pytest.raises(ValueNotPicklable, match=r"state\['job'\]"):
        encode(lambda: None, "state['job']")
