"""What ``sharedstate status`` prints of the server's ``server_info()``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any


def status_lines(info: Mapping[str, Any]) -> list[str]:
    """What ``status`` prints of the server's ``server_info()``.

    The counts of expiry, eviction, memory and reads are shown when the server has them
    (an older server has none)::

        keys:     1,204 (310 with a TTL; 52 expired, 0 evicted since start)
        memory:   12.3 MiB of 512 MiB (allkeys-lru); server process 80 MiB
        reads:    95.1% hits (9,510 of 10,000)
    """
    lines = [
        f"running at {info['address']}",
        f"pid:      {info['pid']}",
        f"version:  {info['version']}",
        f"uptime:   {_duration(info['uptime'])}",
        f"keys:     {_keys_summary(info)}",
        f"clients:  {len(info['clients'])} ({info['waiting']} waiting for the lock or an edit)",
    ]
    memory = _memory_summary(info)
    if memory:
        lines.append(f"memory:   {memory}")
    reads = _reads_summary(info)
    if reads:
        lines.append(f"reads:    {reads}")
    lines.append(f"persistence: {_persistence_summary(info['persistence'])}")
    return lines


def _keys_summary(info: Mapping[str, Any]) -> str:
    notes = []
    if info.get("expiring_keys") is not None:
        notes.append(f"{info['expiring_keys']:,} with a TTL")
    since_start = [
        f"{info[name]:,} {name}" for name in ("expired", "evicted") if info.get(name) is not None
    ]
    if since_start:
        notes.append(", ".join(since_start) + " since start")
    return f"{info['keys']:,}" + (f" ({'; '.join(notes)})" if notes else "")


def _memory_summary(info: Mapping[str, Any]) -> str:
    """The stored data's size against the bound, and the server process's (resident) size."""
    process = info.get("memory_bytes")
    used = info.get("memory_used")
    if used is None:
        return f"{_size(process)} (the server process)" if process else ""
    bound = info.get("max_memory")
    policy = info.get("eviction")
    text = f"{_size(used)} of {_size(bound)}" if bound else f"{_size(used)} (no bound)"
    if bound and policy:
        text += f" ({policy})"
    return text + (f"; server process {_size(process)}" if process else "")


def _reads_summary(info: Mapping[str, Any]) -> str:
    hits, misses = info.get("hits"), info.get("misses")
    if hits is None or misses is None:
        return ""
    reads = hits + misses
    if not reads:
        return "none by key yet"
    return f"{hits / reads:.1%} hits ({hits:,} of {reads:,})"


def _size(size: int) -> str:
    """``12.3 MiB``, ``512 MiB``, ``4 GiB``, ``900 B``: one decimal at most, none if .0."""
    amount, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, bigger
    if unit == "B":
        return f"{size} B"
    return f"{amount:.1f}".removesuffix(".0") + f" {unit}"


def _persistence_summary(persistence: dict[str, Any] | None) -> str:
    if persistence is None:
        return "off (state lives in memory only)"
    journal = f"journal fsync={persistence['fsync']}" if persistence["journal"] else "no journal"
    health = "ok" if persistence["healthy"] else "UNHEALTHY: " + "; ".join(persistence["problems"])
    last = persistence["last_snapshot"]
    when = f", last snapshot {_duration(time.time() - last['at'])} ago" if last else ""
    return f"{health} ({persistence['snapshot']}, {journal}{when})"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{amount}{unit}" for amount, unit in parts if amount] or ["0s"]
    return " ".join(shown[:2])
