"""Durations in words: NVIDIA's log style for logs and metric records, and the dashboard's wording."""

# units from days down to seconds, each one's digits when a larger unit comes before it, how many units are shown,
# and what stands between a number and its unit
_STYLES = {
    "log": (("d", "h", "m", "s"), (0, 2, 2, 2), 3, ""),     # '45s', '3m 07s', '2h 05m 09s', '1d 04h 10m'
    "page": (("d", "h", "min", "s"), (0, 0, 2, 2), 2, " "),  # '45 s', '3 min 07 s', '2 h 05 min', '1 d 4 h'
}


def format_time(seconds, style="log"):
    """Seconds -> the duration in `style`: 'log' (NVIDIA's logs and metric records) or 'page' (the dashboard's
    words), from the largest unit that is not zero. None -> '—'."""
    if seconds is None:
        return "—"
    units, digits, shown, space = _STYLES[style]
    s = int(round(float(seconds)))
    values = (s // 86400, s // 3600 % 24, s // 60 % 60, s % 60)
    first = next((i for i, v in enumerate(values) if v), len(values) - 1)
    return " ".join(f"{values[i]:0{digits[i] if i > first else 0}d}{space}{units[i]}"
                    for i in range(first, min(first + shown, len(values))))
