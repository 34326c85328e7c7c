"""The prepared datasets of the workdir, for every tab that picks one: the list, the choices and their summaries
(cached while a file is unchanged)."""

from __future__ import annotations

from pathlib import Path

from ui.common import Studio

_summary_cache: dict[str, tuple[float, dict]] = {}


def list_datasets(studio: Studio) -> list[Path]:
    """Prepared datasets in the workdir: *.zip files and folders holding dataset images."""
    out = []
    for p in sorted(studio.datasets_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if (p.is_file() and p.suffix.lower() == ".zip") or (p.is_dir() and not p.name.endswith(".tmp")):
            out.append(p)
    return out


def dataset_summary(path: Path) -> dict:
    """engine.data.dataset.summary(path), cached while the file is unchanged."""
    from engine.data.dataset import summary

    key = str(path)
    mtime = path.stat().st_mtime
    hit = _summary_cache.get(key)
    if hit and hit[0] == mtime:
        return hit[1]
    info = summary(path)
    info = dict(info) if not isinstance(info, dict) else info
    _summary_cache[key] = (mtime, info)
    return info


def dataset_choices(studio: Studio) -> list[str]:
    return [p.name for p in list_datasets(studio)]


def forget_summary(path: Path) -> None:
    """Drop the cached summary of a dataset that was deleted or replaced."""
    _summary_cache.pop(str(path), None)
