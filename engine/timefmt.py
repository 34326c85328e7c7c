"""Durations as NVIDIA's logs and metric records write them."""


def format_time(seconds):
    """Seconds -> '45s', '3m 07s', '2h 05m 09s', '1d 04h 10m'."""
    s = int(round(float(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s // 60 % 60:02d}m {s % 60:02d}s"
    return f"{s // 86400}d {s // 3600 % 24:02d}h {s // 60 % 60:02d}m"
