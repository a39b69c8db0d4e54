"""Saved reports: one JSON file each under .gantry/loadtests/, named by time and target."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from console.loadtest.report import Report

DEFAULT_DIR = Path(".gantry/loadtests")


def slug(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", target.split("://")[-1]).strip("-")[:60] or "target"


def new_report_path(dir: Path, target: str, now: datetime | None = None, suffix: str = "") -> Path:
    """A free file under `dir` (created), named by the time and the target."""
    dir.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{slug(target)}{suffix}"
    path = dir / f"{base}.json"
    n = 1
    while path.exists():
        # "~" sorts after ".": a second report of the same second lists after the first
        # ("-2" sorted before it, and the slug may end in "-<port>" anyway).
        n += 1
        path = dir / f"{base}~{n:03d}.json"
    return path


def save_report(report: Report, dir: Path = DEFAULT_DIR, now: datetime | None = None) -> Path:
    path = new_report_path(dir, report.target, now)
    write_report(report, path)
    return path


def write_report(report: Report, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    tmp.replace(path)


def load_report(path: Path) -> Report:
    """ValueError (one line) when the file is not a load test report."""
    try:
        data = json.loads(path.read_text())
        return Report.from_json(data)
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a load test report ({exc})") from None


def list_reports(dir: Path = DEFAULT_DIR) -> list[Path]:
    """Saved reports, oldest first."""
    if not dir.is_dir():
        return []
    return sorted(dir.glob("*.json"))
