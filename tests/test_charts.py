"""The training curves: sensible ranges for one or a few points, plain tick labels, no empty FID/KID panel."""

import pytest

from ui import charts


def rec(kimg, **values):
    out = {"Progress/kimg": {"num": 1, "mean": kimg, "std": 0.0}}
    for key, v in values.items():
        out[key.replace("__", "/")] = {"num": 1, "mean": v, "std": 0.0}
    return out


def axes(fig, letter):
    return [fig.layout[k] for k in fig.layout if k.startswith(f"{letter}axis")]


def test_axis_range_around_one_point_and_within_limits():
    assert charts.axis_range([]) is None
    lo, hi = charts.axis_range([0.7], 0.1, 0.1)
    assert lo < 0.7 < hi and hi - lo == pytest.approx(0.1)  # a calm range around a lone value, not -0.5..1
    lo, hi = charts.axis_range([60.0, 60.01], 0.0, 0.2)
    assert hi - lo == pytest.approx(12.0, rel=1e-3)  # rounding noise is not blown up to fill the panel
    assert charts.axis_range([0.0], 0.01, 0.0, 0.0, 1.0) == [0.0, 0.01]  # p of 0 sits on the floor
    lo, hi = charts.axis_range([0.95, 1.0], 0.2, 0.0, -1.0, 1.0)
    assert hi == 1.0 and lo == pytest.approx(0.8)  # shifted inside the limits, not squeezed
    lo, hi = charts.axis_range([1.0, 5.0])
    assert lo < 1.0 and hi > 5.0 and hi - lo == pytest.approx(4.64)


def test_kimg_range():
    assert charts.kimg_range([0.1]) == [0.0, 0.2]
    assert charts.kimg_range([0.0]) == [0.0, 1.0]
    assert charts.kimg_range([0.1, 0.5, 2.0]) == [0.0, pytest.approx(2.08)]
    lo, hi = charts.kimg_range([5000.0, 5004.0])  # resumed from a long run: around the points, not from 0
    assert 4000 < lo < 5000 and 5004 < hi < 6000


def test_one_tick_gives_calm_axes_and_plain_numbers():
    fig = charts.training_figure([rec(0.1, Loss__G__loss=0.7, Loss__D__loss=1.3, Progress__augment=0.0008,
                                      Loss__signs__real=0.1, Loss__r1_penalty=0.02, Timing__sec_per_kimg=60.0)])
    for ax in axes(fig, "x"):
        assert list(ax.range) == [0.0, 0.2]
        assert ax.exponentformat == "none"  # 0.0008, never "800µ"
    ys = {t.name: t.yaxis for t in fig.data}
    p_axis = fig.layout["yaxis" + ys["p"][1:]]
    assert p_axis.tickformat.endswith("%") and p_axis.range[0] == 0.0 and p_axis.range[1] >= 0.0008
    r_axis = fig.layout["yaxis" + ys["r_t"][1:]]
    assert -1 <= r_axis.range[0] < 0.1 < r_axis.range[1] <= 1
    assert all(ax.exponentformat == "none" for ax in axes(fig, "y"))
    p_trace = next(t for t in fig.data if t.name == "p")
    assert "%" in p_trace.hovertemplate  # 0.08 %, as a person reads it


def test_fid_panel_only_with_metrics_and_jargon_explained():
    stats = [rec(k, Loss__D__loss=1.0) for k in (0.0, 1.0, 2.0)]
    fig = charts.training_figure(stats, {})
    titles = [a.text for a in fig.layout.annotations]
    assert not any(t.startswith("FID / KID <") for t in titles)  # no panel title
    assert len(axes(fig, "x")) == 5
    how = [t for t in titles if "python -m engine metrics" in t]
    assert len(how) == 1 and "Metrics at each snapshot" in how[0]
    hover = {a.text.split(" <")[0]: a.hovertext for a in fig.layout.annotations if a.hovertext}
    assert "how sure D is that the reals are real" in hover["Signs of D(real), r_t"]
    assert "ADA raises p" in hover["Augment p"] and "gamma" in hover["R1 penalty"]
    assert "thousand images" in hover["Sec per kimg"]

    recs = [{"results": {"fid1k": 250.0}, "snapshot_pkl": "network-snapshot-000000.pt"},
            {"results": {"fid1k": 200.0}, "snapshot_pkl": "network-snapshot-000002.pt"}]
    fig = charts.training_figure(stats, {"fid1k": recs})
    titles = [a.text for a in fig.layout.annotations]
    assert any(t.startswith("FID / KID <") for t in titles) and len(axes(fig, "x")) == 6
    assert not any("python -m engine metrics" in t for t in titles)
    fid = next(t for t in fig.data if t.name == "fid1k")
    assert list(fid.x) == [0.0, 2.0] and list(fid.y) == [250.0, 200.0]


def test_best_snapshot_is_marked_on_the_metric_curve():
    stats = [rec(k, Loss__D__loss=1.0) for k in (0.0, 4.0, 8.0)]
    recs = [{"results": {"kid1k": v}, "kimg": k, "snapshot_pkl": f"network-snapshot-{int(k):06d}.pt"}
            for k, v in ((0.0, 0.3), (4.0, 0.021), (8.0, 0.05))]
    fig = charts.training_figure(stats, {"kid1k": recs})
    (star,) = [t for t in fig.data if t.name == "best"]
    assert list(star.x) == [4.0] and list(star.y) == [0.021] and star.marker.symbol == "star"
    kid = next(t for t in fig.data if t.name == "kid1k")
    assert (star.xaxis, star.yaxis) == (kid.xaxis, kid.yaxis)  # on the FID/KID panel, not another
    (note,) = [a for a in fig.layout.annotations if a.text == "best: kimg 4, KID 0.0210"]
    assert (note.x, note.y) == (4.0, 0.021)
    # Nothing measured: no marker.
    assert not [t for t in charts.training_figure(stats, {}).data if t.name == "best"]


def test_speed_panel_leaves_out_start_up_ticks():
    # tick 0 (one step), a new run's first full tick (the first calls' costs: 82.8 s/kimg, then 15.7 in a real
    # first run) and a resumed process's first tick would dwarf the speed
    stats = [rec(0.004, Progress__tick=0, Timing__sec_per_kimg=900.0, Timing__sec_per_tick=3.6),
             rec(0.25, Progress__tick=1, Timing__sec_per_kimg=82.8, Timing__sec_per_tick=10.0),
             rec(0.5, Progress__tick=2, Timing__sec_per_kimg=20.0, Timing__sec_per_tick=10.0),
             rec(1.0, Progress__tick=3, Timing__sec_per_kimg=21.0, Timing__sec_per_tick=10.5),
             rec(1.5, Progress__tick=4, Timing__sec_per_kimg=400.0, Timing__sec_per_tick=200.0),
             rec(2.0, Progress__tick=5, Timing__sec_per_kimg=22.0, Timing__sec_per_tick=11.0)]
    for i, r in enumerate(stats):
        r["timestamp"] = 1000.0 + 11.0 * i + (3600.0 if i >= 4 else 0.0)  # tick 4: after an hour stopped
    fig = charts.training_figure(stats)
    speed = [t for t in fig.data if t.name == "sec/kimg"]
    assert len(speed) == 1 and list(speed[0].y) == [20.0, 21.0, 22.0] and list(speed[0].x) == [0.5, 1.0, 2.0]


def test_apa_p_and_the_lecam_term_are_drawn_only_in_runs_that_use_them():
    plain = [rec(0.5, Progress__tick=1, Progress__augment=0.1, Loss__G__loss=1.0, Loss__D__loss=1.2),
             rec(1.0, Progress__tick=2, Progress__augment=0.2, Loss__G__loss=1.1, Loss__D__loss=1.1)]
    names = {t.name for t in charts.training_figure(plain).data}
    assert "APA p" not in names and "LeCam term" not in names
    both = [dict(r, **rec(r["Progress/kimg"]["mean"], Progress__apa_p=0.05 * i, Loss__D__lecam=0.01)) for i, r in
            enumerate(plain, 1)]
    fig = charts.training_figure(both)
    apa = [t for t in fig.data if t.name == "APA p"]
    assert len(apa) == 1 and list(apa[0].y) == [0.05, 0.1] and list(apa[0].x) == [0.5, 1.0]
    axis = {t.name: t.xaxis for t in fig.data}
    assert axis["LeCam term"] == axis["D loss"]  # in the loss panel
    assert apa[0].xaxis == [t for t in fig.data if t.name == "p"][0].xaxis  # in the same panel as ADA's p
