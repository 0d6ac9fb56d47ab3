"""Usage and cost: what the request log says each tenant, model or backend used, and what that
would cost in the cloud or costs in electricity at home.

``Store.usage_summary`` sums the request log per group and, within each group, per backend and
served model; this module prices those sums with the ``pricing:`` settings:

- **cloud cost**: calls served by a backend marked ``cloud: true``, at the price of the model it
  served (``prices``: per million input and output tokens). A cloud model without a price costs
  nothing here and is listed under ``unpriced``.
- **equivalent cloud cost**: calls served by a local backend, priced as if they had gone to the
  cloud model named by ``local_equivalent``: the homelab-versus-cloud comparison.
- **energy cost**: local calls' busy time (duration less queue wait) x ``energy.watts`` /
  3.6e6 (watt-seconds to kWh) x ``energy.price_per_kwh``. An approximation: it assumes the box
  draws that much only while it serves a call and nothing while idle, and it charges calls that
  overlap on one box once each, so heavy parallel use overstates it.

Token counts are the backend's own, or Hearth's estimate where the backend reported none
(``estimated`` counts those calls; gateway/records.py has the rule).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from hearth.settings import Settings

PER_MILLION = 1_000_000
JOULES_PER_KWH = 3_600_000
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([hdw])")
_SPAN_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}
_BUCKET = re.compile(r"(\d+)\s*([hd])")
# A series has at most this many buckets (a chart of 1000 points is already dense).
MAX_BUCKETS = 1000
_SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "estimated", "busy_s")
_COSTS = ("cloud_cost", "local_equivalent_cost", "energy_cost")


def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds from ``24h``, ``7d``, ``2w`` (that long before now) or an ISO date or
    date-time (UTC unless it names a zone). Raises ValueError."""
    text = text.strip()
    m = _SPAN.fullmatch(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _SPAN_SECONDS[m.group(2)]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"since: expected a span like 24h, 7d or 2w, or an ISO date like 2025-01-31; got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def part_costs(part: dict[str, Any], settings: Settings) -> dict[str, float]:
    """Cost columns of one (backend, served_model) sum from ``Store.usage_summary``."""
    pricing = settings.pricing
    out = dict.fromkeys(_COSTS, 0.0)
    backend = part["backend"]
    if backend is None:  # never reached a backend: nothing ran
        return out
    cloud = any(b.name == backend and b.cloud for b in settings.backends)
    tokens_in, tokens_out = part["prompt_tokens"], part["completion_tokens"]
    if cloud:
        price = pricing.prices.get(part["served_model"] or "")
        if price is not None:
            out["cloud_cost"] = (tokens_in * price.input + tokens_out * price.output) / PER_MILLION
        return out
    if pricing.local_equivalent is not None:
        price = pricing.prices[pricing.local_equivalent]
        out["local_equivalent_cost"] = (tokens_in * price.input + tokens_out * price.output) / PER_MILLION
    energy = pricing.energy
    out["energy_cost"] = part["busy_s"] * energy.watts / JOULES_PER_KWH * energy.price_per_kwh
    return out


def price_groups(groups: Iterable[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """``Store.usage_summary`` groups with their cost columns, ``estimated_pct`` and
    ``unpriced`` (cloud models without a price) added and the per-part detail dropped."""
    cloud = {b.name for b in settings.backends if b.cloud}
    out = []
    for g in groups:
        row = {k: v for k, v in g.items() if k != "parts"}
        row.update(dict.fromkeys(_COSTS, 0.0))
        unpriced: set[str] = set()
        for part in g["parts"]:
            for k, v in part_costs(part, settings).items():
                row[k] += v
            model = part["served_model"] or ""
            used = part["prompt_tokens"] or part["completion_tokens"]
            if part["backend"] in cloud and used and model not in settings.pricing.prices:
                unpriced.add(model)
        row["estimated_pct"] = 100 * g["estimated"] / g["requests"] if g["requests"] else 0.0
        row["unpriced"] = sorted(unpriced)
        out.append(row)
    return out


def total(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The totals row of priced groups."""
    t: dict[str, Any] = {"group": "total"}
    for k in (*_SUMS, *_COSTS):
        t[k] = sum(r[k] for r in rows)
    n = t["requests"]
    t["mean_duration_ms"] = sum(r["mean_duration_ms"] * r["requests"] for r in rows) / n if n else 0.0
    t["estimated_pct"] = 100 * t["estimated"] / n if n else 0.0
    t["unpriced"] = sorted({m for r in rows for m in r["unpriced"]})
    return t


def report(groups: list[dict[str, Any]], settings: Settings, since: float, by: str) -> dict[str, Any]:
    """What ``hearth usage --json``, ``/api/usage`` and ``/admin/usage`` answer."""
    rows = price_groups(groups, settings)
    return {"since": since, "by": by, "groups": rows, "total": total(rows)}


def parse_bucket(text: str) -> int:
    """Seconds from ``1h``, ``6h``, ``1d``: whole hours, the store's finest grain (a day is a
    UTC day). Raises ValueError."""
    m = _BUCKET.fullmatch(text.strip())
    if not m or int(m.group(1)) < 1:
        raise ValueError(f"bucket: expected whole hours or days like 1h, 6h or 1d; got {text!r}")
    return int(m.group(1)) * _SPAN_SECONDS[m.group(2)]


def series_window(since: float, until: float, bucket: int) -> tuple[float, list[float]]:
    """``since`` moved back to the start of its bucket (so that every bucket is whole but the
    one still running), and the start of every bucket up to ``until`` (whose hour counts
    whole). ValueError if the window is empty or has more than MAX_BUCKETS buckets."""
    if until <= since:
        raise ValueError("since: must be before until")
    first = since // bucket
    count = int(-(-until // bucket) - first)
    if count > MAX_BUCKETS:
        raise ValueError(
            f"{count} buckets of {bucket} s between since and until; at most {MAX_BUCKETS}: "
            "choose a wider bucket or a shorter span"
        )
    return first * bucket, [(first + i) * bucket for i in range(count)]


# The columns of each point of a series, in the order series_report adds them up.
_POINT = ("requests", "errors", "prompt_tokens", "completion_tokens", "estimated", *_COSTS)


def _unit_costs(part: dict[str, Any], settings: Settings) -> list[float]:
    """What one prompt token, one completion token and one busy second of this part's backend
    and model cost, per cost column: [in, out, second] x _COSTS."""
    zero = {**part, "prompt_tokens": 0, "completion_tokens": 0, "busy_s": 0.0}
    units = [part_costs({**zero, k: 1}, settings) for k in ("prompt_tokens", "completion_tokens", "busy_s")]
    return [u[c] for c in _COSTS for u in units]


def _point(values: list[float], **head: Any) -> dict[str, Any]:
    point = {**head, **dict(zip(_POINT, values, strict=True))}
    point["tokens"] = point["prompt_tokens"] + point["completion_tokens"]
    return point


def series_report(
    rows: Iterable[dict[str, Any]], settings: Settings, since: float, until: float, bucket: int, by: str
) -> dict[str, Any]:
    """``Store.usage_series`` rows priced and summed per (bucket, group): what
    ``/admin/usage/series``, ``/api/usage/series`` and the hub's charts get (api/usage.py,
    ``usage_series_report``, documents the shape)."""
    since, starts = series_window(since, until, bucket)
    cloud = {b.name for b in settings.backends if b.cloud}
    sums: dict[tuple[float, Any], list[float]] = {}
    unpriced: set[str] = set()
    # Costs are linear in tokens and busy time: price each (backend, model) once, per unit.
    # Lists, not dicts, in this loop: a week of hourly points per tenant is ~30k parts.
    # Each with the model's name if it is a cloud model without a price.
    units: dict[tuple[str | None, str | None], tuple[list[float], str | None]] = {}
    for part in rows:
        where = (part["backend"], part["served_model"])
        found = units.get(where)
        if found is None:
            model = part["served_model"] or ""
            missing = part["backend"] in cloud and model not in settings.pricing.prices
            found = units[where] = (_unit_costs(part, settings), model if missing else None)
        unit, no_price = found
        key = (part["start"], part["group"])
        acc = sums.get(key)
        if acc is None:
            acc = sums[key] = [0, 0, 0, 0, 0, 0.0, 0.0, 0.0]
        tokens_in, tokens_out, busy = part["prompt_tokens"], part["completion_tokens"], part["busy_s"]
        acc[0] += part["requests"]
        acc[1] += part["errors"]
        acc[2] += tokens_in
        acc[3] += tokens_out
        acc[4] += part["estimated"]
        for i in range(3):
            acc[5 + i] += tokens_in * unit[3 * i] + tokens_out * unit[3 * i + 1] + busy * unit[3 * i + 2]
        if no_price is not None and (tokens_in or tokens_out):
            unpriced.add(no_price)
    totals: dict[Any, list[float]] = {}
    for (_, group), acc in sums.items():
        t = totals.setdefault(group, [0, 0, 0, 0, 0, 0.0, 0.0, 0.0])
        for i, v in enumerate(acc):
            t[i] += v
    groups = sorted(totals, key=lambda g: (-totals[g][0], str(g)))
    order = {g: i for i, g in enumerate(groups)}
    everything = [sum(t[i] for t in totals.values()) for i in range(len(_POINT))]
    return {
        "since": since,
        "until": until,
        "bucket": bucket,
        "by": by,
        "buckets": starts,
        "groups": groups,
        "series": [
            _point(sums[key], start=key[0], group=key[1])
            for key in sorted(sums, key=lambda k: (k[0], order[k[1]]))
        ],
        "totals": [_point(totals[g], group=g) for g in groups],
        "total": _point(everything),
        "unpriced": sorted(unpriced),
    }


def _money(x: float) -> str:
    return f"{x:.2f}" if x >= 100 else f"{x:.4f}"


def table(rep: dict[str, Any]) -> str:
    """The report as an aligned text table with a totals row."""
    head = (
        rep["by"],
        "requests",
        "errors",
        "prompt tok",
        "completion tok",
        "est.%",
        "cloud cost",
        "equiv. cloud cost (local)",
        "energy cost",
    )
    lines = []
    for r in [*rep["groups"], rep["total"]]:
        lines.append(
            (
                "(none)" if r["group"] is None else str(r["group"]),
                str(r["requests"]),
                str(r["errors"]),
                str(r["prompt_tokens"]),
                str(r["completion_tokens"]),
                f"{r['estimated_pct']:.1f}",
                _money(r["cloud_cost"]),
                _money(r["local_equivalent_cost"]),
                _money(r["energy_cost"]),
            )
        )
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]

    def fmt(row: tuple[str, ...]) -> str:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [fmt(head), rule, *(fmt(x) for x in lines[:-1]), rule, fmt(lines[-1])]
    unpriced = rep["total"]["unpriced"]
    if unpriced:
        out.append(f"no price for cloud models (counted as 0): {', '.join(unpriced)}")
    return "\n".join(out)
