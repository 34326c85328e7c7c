import json
import subprocess
import sys

from engine.train.expected import CURVES_FILE, expected_quality, load_curves, quality_text

CURVES = [{"preset": "tiny", "resolution": 32, "dataset": "emoji", "num_gen": 200, "num_real": 500, "seeds": 2,
           "points": [{"kimg": 0.008, "kid": 0.5, "kid_sd": 0.01}, {"kimg": 2.0, "kid": 0.4, "kid_sd": 0.02},
                      {"kimg": 4.0, "kid": 0.3, "kid_sd": 0.03}, {"kimg": 6.0, "kid": 0.25, "kid_sd": 0.01}]},
          {"preset": "small", "resolution": 64, "dataset": "emoji", "num_gen": 200, "num_real": 500, "seeds": 1,
           "points": [{"kimg": 10.0, "kid": 0.2}]}]


def test_uses_the_last_measured_point_at_or_below_the_length():
    e = expected_quality("tiny", 5, 32, CURVES)
    assert (e.kimg, e.kid, e.kid_sd, e.beyond) == (4.0, 0.3, 0.03, False)
    assert expected_quality("tiny", 4, 32, CURVES).kid == 0.3
    assert expected_quality("tiny", 4.05, 32, CURVES).kimg == 4.0  # a tick ends a little past its kimg


def test_past_the_curve_says_so_and_never_extrapolates():
    e = expected_quality("tiny", 100, 32, CURVES)
    assert e.beyond and e.kimg == 6.0 and e.kid == 0.25
    text = quality_text("tiny", 100, 32, CURVES)
    assert "longest measured" in text and "6 kimg" in text and "KID 0.250" in text


def test_nothing_when_no_curve_fits():
    assert expected_quality("tiny", 1, 32, CURVES) is None  # shorter than the first trained point
    assert expected_quality("tiny", 5, 64, CURVES) is None  # no curve at this resolution
    assert expected_quality("auto", 5, 32, CURVES) is None  # no curve of this preset
    assert expected_quality("tiny", 0, 32, CURVES) is None
    assert quality_text("auto", 5, 32, CURVES) == ""


def test_text_names_preset_length_value_and_spread():
    text = quality_text("tiny", 2.5, 32, CURVES)
    assert text.startswith("Expected quality: at 2 kimg the tiny preset reached **KID 0.400** ± 0.020")
    assert "2 training seeds" in text and "emoji at 32 px" in text and "200 generated vs 500 real" in text
    assert "±" not in quality_text("small", 10, 64, CURVES)  # one seed: no spread to give


def test_missing_or_broken_file_gives_no_curves(tmp_path):
    assert load_curves(tmp_path / "none.json") == []
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert load_curves(bad) == []
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"curves": CURVES}))
    assert len(load_curves(good)) == 2


def test_committed_curves_are_well_formed():
    curves = load_curves(CURVES_FILE)
    assert curves, f"{CURVES_FILE} holds no measured curve"
    for c in curves:
        kimgs = [p["kimg"] for p in c["points"]]
        assert kimgs == sorted(kimgs) and all(isinstance(p["kid"], float) for p in c["points"])
        assert c["source"] and c["date"] and c["dataset"]
        assert c["seeds"] >= 1 and c["num_gen"] > 0 and c["num_real"] > 0 and c["resolution"] > 0


def test_the_tiny_preset_has_a_measured_expectation():
    text = quality_text("tiny", 100000, 32)
    assert "the tiny preset reached **KID" in text and "longest measured" in text


def test_module_does_not_import_torch():
    code = "import sys, engine.train.expected; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_point_at_a_tick_end_is_quoted_in_whole_kimg():
    curves = [{"preset": "tiny", "resolution": 32, "dataset": "emoji", "seeds": 1, "num_gen": 200, "num_real": 500,
               "points": [{"kimg": 0.008, "kid": 0.3}, {"kimg": 40.008, "kid": 0.1}, {"kimg": 80.016, "kid": 0.05}]}]
    assert quality_text("tiny", 60, 32, curves).startswith("Expected quality: at 40 kimg the tiny preset reached "
                                                           "**KID 0.100** (1 training seed; emoji at 32 px")
