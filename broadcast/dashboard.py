"""
The admin dashboard's figures: connection counts over time, drawn as inline SVG on
the server (no script, no CDN), from the samples each process writes.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.utils import timezone
from django.utils.html import format_html, format_html_join

from broadcast.models import ConnectionSample

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 640, 160, 44, 20, 10


@dataclass
class Series:
    title: str
    start: dt.datetime
    step: dt.timedelta
    values: list[int | None]  # None: no process reported in that interval

    @property
    def peak(self) -> int:
        return max((value for value in self.values if value is not None), default=0)


def connection_series(
    title: str, span: dt.timedelta, buckets: int, now: dt.datetime | None = None
) -> Series:
    """
    Clients connected over ``span``, in ``buckets`` intervals: in each, the sum over
    processes of each process's highest sample in it.
    """
    now = now or timezone.now()
    start = now - span
    step = span / buckets
    highest: dict[tuple[int, int], int] = defaultdict(int)
    samples = ConnectionSample.objects.filter(taken_at__gt=start, taken_at__lte=now)
    for process_id, taken_at, current in samples.values_list("process_id", "taken_at", "current"):
        index = min(buckets - 1, int((taken_at - start) / step))
        key = (index, process_id)
        highest[key] = max(highest[key], current)
    values: list[int | None] = [None] * buckets
    for (index, _), current in highest.items():
        values[index] = (values[index] or 0) + current
    return Series(title, start, step, values)


def svg_chart(series: Series) -> str:
    """An SVG line chart of ``series``; intervals nobody reported in are gaps."""
    peak = max(series.peak, 1)
    plot_w, plot_h = WIDTH - PAD_LEFT - 4, HEIGHT - PAD_BOTTOM - PAD_TOP
    count = len(series.values)

    def point(index: int, value: int) -> str:
        x = PAD_LEFT + plot_w * (index + 0.5) / count
        y = PAD_TOP + plot_h * (1 - value / peak)
        return f"{x:.1f},{y:.1f}"

    runs: list[list[str]] = [[]]
    for index, value in enumerate(series.values):
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append(point(index, value))
    lines = format_html_join(
        "",
        '<polyline points="{}" fill="none" stroke="#417690" stroke-width="2"/>',
        ((" ".join(run),) for run in runs if len(run) > 1),
    )
    dots = format_html_join(
        "",
        '<circle cx="{}" cy="{}" r="2.5" fill="#417690"/>',
        (tuple(run[0].split(",")) for run in runs if len(run) == 1),
    )
    end = series.start + series.step * count
    label = "%d %b %H:%M" if end - series.start >= dt.timedelta(days=1) else "%H:%M"
    return format_html(
        '<svg class="hub-chart" role="img" aria-label="{title}" width="{w}" height="{h}" '
        'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">'
        "<title>{title}</title>"
        '<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#999"/>'
        '<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/>'
        '<text x="{label_x}" y="{top_label}" font-size="11" text-anchor="end">{peak}</text>'
        '<text x="{label_x}" y="{bottom}" font-size="11" text-anchor="end">0</text>'
        '<text x="{left}" y="{time_y}" font-size="11">{start}</text>'
        '<text x="{right}" y="{time_y}" font-size="11" text-anchor="end">{end} UTC</text>'
        "{lines}{dots}</svg>",
        title=series.title,
        w=WIDTH,
        h=HEIGHT,
        left=PAD_LEFT,
        right=WIDTH - 4,
        top=PAD_TOP,
        bottom=HEIGHT - PAD_BOTTOM,
        label_x=PAD_LEFT - 6,
        top_label=PAD_TOP + 10,
        time_y=HEIGHT - 4,
        peak=series.peak,
        start=series.start.strftime(label),
        end=end.strftime(label),
        lines=lines,
        dots=dots,
    )


# The most subscribed topics the dashboard lists (hubstatus --topics lists them all).
TOPICS_SHOWN = 20


def dashboard_context(
    now: dt.datetime | None = None, *, show_broadcasts: bool = True
) -> dict[str, Any]:
    """
    Everything the hub-process dashboard shows above the process list; the recent
    broadcasts (their payloads) only for users who may view broadcasts.
    """
    from broadcast.models import Broadcast, HubProcess
    from broadcast.stream.counts import live_topic_totals

    now = now or timezone.now()
    hour = connection_series("Clients connected, last hour", dt.timedelta(hours=1), 60, now)
    day = connection_series("Clients connected, last 24 hours", dt.timedelta(days=1), 96, now)
    live = list(HubProcess.objects.live().order_by("host", "pid"))
    # Topic names can be users' (user.<pk>): shown to those who may view broadcasts.
    topics = list(live_topic_totals().items())[:TOPICS_SHOWN] if show_broadcasts else []
    return {
        "live_total": HubProcess.objects.live_total(),
        "live_processes": live,
        "topics": [
            (topic, total, [(p, p.topics[topic]) for p in live if (p.topics or {}).get(topic)])
            for topic, total in topics
        ],
        "charts": [(hour, svg_chart(hour)), (day, svg_chart(day))],
        "recent_broadcasts": list(Broadcast.objects.order_by("-pk")[:10])
        if show_broadcasts
        else [],
    }
