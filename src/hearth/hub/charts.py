"""The hub's charts: SVG drawn on the server by pygal, sized by their container (so they fit a
phone), with tooltips as SVG titles and no script of their own.

pygal appends a finder without ``find_spec`` to ``sys.meta_path`` when imported (for its map
plugins, which Hearth does not use); Python warns about such finders on every import it is
asked about afterwards. It is taken out again right after the import.
"""

from __future__ import annotations

import sys
from typing import Any

from markupsafe import Markup

_before = list(sys.meta_path)
import pygal  # type: ignore[import-untyped]  # noqa: E402
from pygal.style import Style  # type: ignore[import-untyped]  # noqa: E402

sys.meta_path[:] = [f for f in sys.meta_path if f in _before or hasattr(f, "find_spec")]

STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#1f2933",
    foreground_strong="#1f2933",
    foreground_subtle="#9aa5b1",
    colors=("#2f6fde", "#e8833a", "#3aa76d", "#c2413b", "#8e5cd9", "#d4a72c", "#1f9bb5", "#7b8794"),
    font_family="system-ui, sans-serif",
    label_font_size=13,
    major_label_font_size=13,
    legend_font_size=14,
    value_font_size=12,
    tooltip_font_size=13,
)


def _render(chart: Any, title: str, labels: list[str], series: dict[str, list[float]]) -> Markup:
    chart.x_labels = labels
    for name, values in series.items():
        chart.add(name, values)
    svg = chart.render(is_unicode=True)
    return Markup('<figure class="chart" role="img" aria-label="{}">{}</figure>').format(title, Markup(svg))


def _options(title: str, labels: list[str]) -> dict[str, Any]:
    return {
        "style": STYLE,
        "js": [],
        "disable_xml_declaration": True,
        "legend_at_bottom": True,
        "legend_at_bottom_columns": 2,
        "width": 720,
        "height": 380,
        "x_label_rotation": 30 if len(labels) > 6 else 0,
        # Many buckets: label every few only, so a phone's width can still read them.
        "x_labels_major_every": max(1, len(labels) // 6),
        "show_minor_x_labels": len(labels) <= 8,
        "truncate_label": 24,
        "truncate_legend": 40,
        "no_data_text": "no calls in this period",
        "title": title,
    }


def bars(title: str, labels: list[str], series: dict[str, list[float]]) -> Markup:
    """One bar per label and series, side by side."""
    return _render(pygal.Bar(**_options(title, labels)), title, labels, series)


def stacked_bars(
    title: str, labels: list[str], series: dict[str, list[float]], horizontal: bool = False
) -> Markup:
    """One bar per label, its series stacked; horizontal bars suit long labels (names)."""
    kind = pygal.HorizontalStackedBar if horizontal else pygal.StackedBar
    return _render(kind(**_options(title, labels)), title, labels, series)
