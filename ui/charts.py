"""Plotly charts of a run's stats.jsonl and metric-*.jsonl, all over kimg."""

from __future__ import annotations


import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.runs import snapshot_kimg, steady_ticks
from engine.train.options import ADA_TARGET

# Hover text of each panel's title: what the jargon means and what a healthy curve looks like.
EXPLAIN = {
    "Loss": "G loss: how badly the generator fools the discriminator D (lower: fooled more often).<br>"
            "D loss: how badly D tells real images from generated ones.<br>"
            "The two push against each other; they wobble and need not go down. Trouble looks like one of "
            "them<br>running off to a much larger value for good.<br>"
            "LeCam term (runs with --lecam): the part of D's loss that keeps its verdicts near their recent "
            "averages.",
    "R1 penalty": "R1 penalty: a brake on how steeply D's verdict changes around the real images<br>"
                  "(its weight is gamma). It keeps D smooth; small and steady is normal.",
    "Augment p": "Augment p: how often ADA (adaptive augmentation) flips, shifts, recolours ... each image "
                 "D sees.<br>ADA raises p while r_t is above its target (D starts to learn the training "
                 "images by heart)<br>and lowers it while r_t is below. 0% means no augmentation.<br>"
                 "APA p (runs with --apa): the share of real images D is shown replaced by generated ones "
                 "labelled real,<br>raised and lowered the same way against its own target.",
    "Signs of D(real), r_t": "r_t, the mean sign of D's output on real images: how sure D is that the reals "
                             "are real,<br>from -1 (never) to 1 (always). Near 1, D has memorised the "
                             "training set (overfitting);<br>with ADA, p rises whenever r_t passes the "
                             f"target ({ADA_TARGET:g} unless set otherwise).",
    "Sec per kimg": "Seconds to show D a thousand images (1 kimg): the training speed; lower is faster.",
    "FID / KID": "FID and KID: distances between generated and real images, measured with an Inception "
                 "network.<br>Lower is better; compare values of the same metric and dataset only.",
}
# (title, [(stats key, legend name, hover number format)]) in the order the panels appear.
PANELS = [
    ("Loss", [("Loss/G/loss", "G loss", ".4~g"), ("Loss/D/loss", "D loss", ".4~g"),
              ("Loss/D/lecam", "LeCam term", ".4~g")]),
    ("R1 penalty", [("Loss/r1_penalty", "R1", ".4~g")]),
    ("Augment p", [("Progress/augment", "p", ".2~%"), ("Progress/apa_p", "APA p", ".2~%")]),
    ("Signs of D(real), r_t", [("Loss/signs/real", "r_t", ".3~f")]),
    ("Sec per kimg", [("Timing/sec_per_kimg", "sec/kimg", ",.4~g")]),
]
METRICS_TITLE = "FID / KID"
# Smallest y span each panel shows, as (absolute, fraction of the largest value), so that one point or a flat
# line sits in a calm range instead of a zoom into rounding noise; and the values the axis never goes beyond.
Y_SPAN = {"Loss": (0.1, 0.1), "R1 penalty": (0.0, 0.2), "Augment p": (0.01, 0.0),
          "Signs of D(real), r_t": (0.2, 0.0), "Sec per kimg": (0.0, 0.2), METRICS_TITLE: (0.0, 0.2)}
Y_LIMITS = {"R1 penalty": (0.0, None), "Augment p": (0.0, 1.0), "Signs of D(real), r_t": (-1.0, 1.0),
            "Sec per kimg": (0.0, None), METRICS_TITLE: (0.0, None)}
NO_METRICS = ("FID / KID are not measured in this run. Choose them under <i>Metrics at each snapshot</i> when "
              "starting a run,<br>or measure a snapshot later: <span style='font-family:monospace'>python -m engine metrics --network "
              "runs/&lt;run&gt;/network-snapshot-NNNNNN.pt --metrics fid1k</span>")


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
            # NVIDIA's runs record .pkl names; ours .pt, the finer KKKKKK_III within a kimg.
            kimg = snapshot_kimg(rec.get("snapshot_pkl") or rec.get("snapshot") or "")
        for name, value in (rec.get("results") or {}).items():
            if kimg is None or not isinstance(value, (int, float)):
                continue
            xs, ys = out.setdefault(name, ([], []))
            xs.append(float(kimg))
            ys.append(float(value))
    return out


def axis_range(values, min_span: float = 0.0, rel_span: float = 0.0, low=None, high=None):
    """[lo, hi] showing every value with a margin, at least max(min_span, rel_span * |largest|) wide, kept within
    [low, high] where given (shifted, not squeezed, when the margin would cross a limit). None without values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    span = hi - lo
    width = max(span * 1.16, min_span, rel_span * max(abs(lo), abs(hi)))
    if width <= 0:
        width = 1.0  # only zeros, and no minimum asked for: any unit range will do
    a, b = lo - (width - span) / 2, hi + (width - span) / 2
    if low is not None and a < low:
        a, b = low, min(b + (low - a), high) if high is not None else b + (low - a)
    if high is not None and b > high:
        a, b = max(a - (b - high), low) if low is not None else a - (b - high), high
    return [a, b]


def kimg_range(xs):
    """The x range shared by every panel: from 0 while the run's own start is in view, else around the points."""
    xs = [float(x) for x in xs if x is not None]
    if not xs:
        return None
    lo, hi = min(xs), max(xs)
    if hi <= 0:
        return [0.0, 1.0]
    if lo == hi:  # one tick: in the middle of the way from the start
        return [0.0, 2 * hi] if hi <= 10 else [hi * 0.9, hi * 1.1]
    if lo <= 0.5 * hi:  # the run's own history: the start is part of the story
        return [0.0, hi * 1.04]
    return axis_range(xs, rel_span=0.05, low=0.0)


def training_figure(stats: list[dict], metrics: dict[str, list] | None = None, title: str = "") -> go.Figure:
    """Curves over kimg: losses, R1, augment p, r_t, speed, and FID/KID when any were measured.

    Without metrics the five panels fill the width (three above, two below) and one line says how to get FID/KID.
    """
    points: dict[str, tuple[list[float], list[float]]] = {}
    for recs in (metrics or {}).values():
        points.update(metric_points(recs))
    panels = list(PANELS) + ([(METRICS_TITLE, [])] if points else [])
    titles = [f"{t} <span style='color:#0969da'>(?)</span>" for t, _ in panels]
    if points:
        fig = make_subplots(rows=2, cols=3, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.2)
        cells = [(i // 3 + 1, i % 3 + 1) for i in range(6)]
    else:
        # Six columns: three panels two columns wide above, two panels three wide below.
        specs = [[{"colspan": 2}, None, {"colspan": 2}, None, {"colspan": 2}, None],
                 [{"colspan": 3}, None, None, {"colspan": 3}, None, None]]
        fig = make_subplots(rows=2, cols=6, specs=specs, subplot_titles=titles, horizontal_spacing=0.08,
                            vertical_spacing=0.2)
        cells = [(1, 1), (1, 3), (1, 5), (2, 1), (2, 4)]
    for ann, (t, _) in zip(fig.layout.annotations, panels):
        ann.update(hovertext=EXPLAIN[t], hoverlabel=dict(bgcolor="white", font=dict(size=12)))

    all_x: list[float] = []
    for (row, col), (name, keys) in zip(cells, panels):
        ys_all: list[float] = []
        for key, legend, fmt in keys:
            # Start-up ticks (tick 0, a resumed process's first) would dwarf the speed: left out of its panel.
            xs, ys = series(steady_ticks(stats) if key == "Timing/sec_per_kimg" else stats, key)
            if xs:
                fig.add_trace(_trace(xs, ys, legend, fmt), row=row, col=col)
                all_x += xs
                ys_all += ys
        if name == METRICS_TITLE:
            for metric, (xs, ys) in sorted(points.items()):
                fig.add_trace(_trace(xs, ys, metric, ".4~g", lines=True), row=row, col=col)
                all_x += xs
                ys_all += ys
            best = best_point(metrics)
            if best:
                _mark_best(fig, best, row, col)
        span, rel = Y_SPAN[name]
        low, high = Y_LIMITS.get(name, (None, None))
        fig.update_yaxes(range=axis_range(ys_all, span, rel, low, high), exponentformat="none",
                         tickformat=".1~%" if name == "Augment p" else None, row=row, col=col)
        fig.update_xaxes(title_text="kimg", title_font=dict(size=10), exponentformat="none", row=row, col=col)
    fig.update_xaxes(range=kimg_range(all_x))
    bottom = 40
    if not points:
        bottom = 115  # room for the line under the legend
        fig.add_annotation(text=NO_METRICS, showarrow=False, xref="paper", yref="paper", x=0, y=0, yshift=-78,
                           xanchor="left", yanchor="top", align="left", font=dict(size=11, color="#666"))
    fig.update_layout(height=520 + bottom - 40, margin=dict(l=40, r=20, t=50 if title else 30, b=bottom),
                      showlegend=True, legend=dict(orientation="h", y=-0.12), title=title or None,
                      template="plotly_white", hovermode="closest")
    return fig


def best_point(metrics: dict[str, list] | None):
    """(kimg, value, label) of the best snapshot measured (engine.train.health.best_snapshot's choice of metric
    and snapshot), placed where its point is on the curve; None when nothing was measured."""
    from engine.train.health import best_snapshot

    if not metrics:
        return None
    best = best_snapshot(".", metrics=metrics)
    if not best:
        return None
    kimg = None
    for rec in metrics.get(best["metric"]) or []:
        if isinstance(rec, dict) and rec.get("snapshot_pkl") == best["snapshot"]:
            kimg = metric_points([rec]).get(best["metric"], ([None], []))[0][0]
    if kimg is None:
        kimg = best["kimg"]
    return None if kimg is None else (float(kimg), best["value"], best["label"])


def _mark_best(fig, best, row, col):
    kimg, value, label = best
    fig.add_trace(go.Scatter(x=[kimg], y=[value], name="best", mode="markers", cliponaxis=False,
                             marker=dict(symbol="star", size=14, color="#d4a017", line=dict(width=1, color="#333")),
                             hovertemplate=f"{label}<extra></extra>"), row=row, col=col)
    fig.add_annotation(x=kimg, y=value, text=label, showarrow=True, arrowhead=2, ax=0, ay=-28,
                       font=dict(size=11), bgcolor="rgba(255,255,255,0.8)", row=row, col=col)


def _trace(xs, ys, name, fmt, lines=False):
    mode = "lines+markers" if lines or len(xs) < 30 else "lines"
    return go.Scatter(x=xs, y=ys, name=name, mode=mode, marker=dict(size=4 if not lines else 6), cliponaxis=False,
                      hovertemplate=f"{name} %{{y:{fmt}}} at %{{x:,.3~f}} kimg<extra></extra>")


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14, color="#777"), x=0.5, y=0.5,
                       xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=10, b=10), template="plotly_white")
    return fig
