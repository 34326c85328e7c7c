from engine.timefmt import format_time


def test_log_style_is_nvidias():
    assert [format_time(s) for s in (0, 45, 187, 3600, 7509, 100000)] == \
        ["0s", "45s", "3m 07s", "1h 00m 00s", "2h 05m 09s", "1d 03h 46m"]


def test_page_style_keeps_the_dashboards_words():
    assert [format_time(s, "page") for s in (12, 200, 7509, 100000, None)] == \
        ["12 s", "3 min 20 s", "2 h 05 min", "1 d 3 h", "—"]
