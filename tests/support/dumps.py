"""What the dump and restore tests store: values of many types, keys of several."""

from __future__ import annotations

import datetime
from typing import Any

# Values JSON can't hold exactly (a tuple key, a set, a datetime, bytes) beside plain ones.
RICH: dict[Any, Any] = {
    "text": "héllo",
    ("tuple", 1): (1, 2),
    "set": {1, 2},
    "when": datetime.datetime(2026, 11, 21, 12, 0),
    "bytes": b"\x00\xff",
    "nested": {"a": [1, {"b": None}]},
}
