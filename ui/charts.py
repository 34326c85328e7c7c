"""Plotly charts of a run's stats.jsonl and metric-*.jsonl, all over kimg."""

from __future__ import annotations

import re

import plotly.graph_objects as go
from plotly.subplots import make_subplots

# (title, [(stats key, legend name)]) in the order the panels appear.
PANELS = [
    ("Loss", [("Loss/G/loss", "G loss"), ("Loss/D/loss", "D loss")]),
    ("R1 penalty", [("Loss/r1_penalty", "R1")]),
    ("Augment p", [("Progress/augment", "p")]),
    ("Signs of D(real), r_t", [("Loss/signs/real", "r_t")]),
    ("Sec per kimg", [("Timing/sec_per_kimg", "sec/kimg")]),
    ("FID / KID", []),
]
SNAP_KIMG_RE = re.compile(r"(\d+)\.(pt|pkl)$")


def _mean(record: dict, key: str):
    v = record.get(key)
    if isinstance(v, dict):
        v = v.get("mean")
    return float(v) if isinstance(v, (int, float)) else None


def series(stats: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(kimg values, means) of one stats key, leaving out ticks where the key is missing."""
    xs, ys = [], []
    for rec in stats:
        x, y = _mean(rec, "Progress/kimg"), _mean(rec, key)
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def metric_points(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{metric name: (kimg, value)} from metric-*.jsonl records (kimg read from the snapshot's name)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records or []:
        if not isinstance(rec, dict):
            continue
        kimg = rec.get("kimg")
        if kimg is None:
            m = SNAP_KIMG_RE.search(str(rec.get("snapshot_pkl") or rec.get("snapshot") or ""))
            kimg = int(m.group(1)) if m else None
        for name, value in (rec.get("results") or {}).items():
            if kimg is None or not isinstance(value, (int, float)):
                continue
            xs, ys = out.setdefault(name, ([], []))
            xs.append(float(kimg))
            ys.append(float(value))
    return out


def training_figure(stats: list[dict], metrics: dict[str, list] | None = None, title: str = "") -> go.Figure:
    """A 2 x 3 grid of curves over kimg: losses, R1, augment p, r_t, speed, FID/KID."""
    fig = make_subplots(rows=2, cols=3, subplot_titles=[t for t, _ in PANELS], horizontal_spacing=0.08,
                        vertical_spacing=0.2)
    for i, (_, keys) in enumerate(PANELS):
        row, col = i // 3 + 1, i % 3 + 1
        for key, name in keys:
            xs, ys = series(stats, key)
            if xs:
                fig.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines+markers" if len(xs) < 30 else "lines",
                                         marker=dict(size=4)), row=row, col=col)
        if i == len(PANELS) - 1:
            points = {}
            for recs in (metrics or {}).values():
                points.update(metric_points(recs))
            for name, (xs, ys) in sorted(points.items()):
                fig.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines+markers"), row=row, col=col)
            if not points:
                # Paper coordinates: an empty subplot's axes are not drawn, so "x6 domain" would not place it.
                xd = fig.layout[f"xaxis{i + 1}"].domain
                yd = fig.layout[f"yaxis{i + 1}"].domain
                fig.add_annotation(text="no metrics yet<br>(choose fid1k or fid50k_full<br>to compute them)",
                                   showarrow=False, font=dict(size=11, color="#888"), xref="paper", yref="paper",
                                   x=(xd[0] + xd[1]) / 2, y=(yd[0] + yd[1]) / 2)
        fig.update_xaxes(title_text="kimg", title_font=dict(size=10), row=row, col=col)
    fig.update_layout(height=520, margin=dict(l=40, r=20, t=50 if title else 30, b=40), showlegend=True,
                      legend=dict(orientation="h", y=-0.12), title=title or None, template="plotly_white")
    return fig


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14, color="#777"), x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10), template="plotly_white")
    return fig
