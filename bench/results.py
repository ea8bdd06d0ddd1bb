"""results.json (one key per metric) and its rendering as RESULTS.md with the machine it ran on."""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

BENCH_DIR = Path(__file__).parent
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "RESULTS.md"


class Metric(BaseModel):
    value: float
    unit: str
    goal: str
    measured_at: str
    note: str = ""


def metric(value: float, unit: str, goal: str, note: str = "") -> Metric:
    return Metric(
        value=round(value, 4),
        unit=unit,
        goal=goal,
        note=note,
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(pct) - 1]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f"{pages / 2**30:.1f} GiB"
    except (ValueError, OSError):
        memory = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def save(new: dict[str, Metric]) -> dict[str, Any]:
    """Merge into results.json so each suite only replaces its own keys."""
    data: dict[str, Any] = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {}
    data.update({name: m.model_dump(exclude_defaults=False) for name, m in new.items()})
    data = dict(sorted(data.items()))
    RESULTS_JSON.write_text(json.dumps(data, indent=2) + "\n")
    RESULTS_MD.write_text(render(data, machine()))
    return data


def render(data: dict[str, Any], host: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (do not edit by hand). Machine of the last run: "
        f"{host['cpu']}, {host['cores']} cores, {host['memory']} RAM, {host['os']}, "
        f"Python {host['python']}.",
        "",
        "| metric | value | unit | goal | measured at | note |",
        "|---|---:|---|---|---|---|",
    ]
    for name, m in data.items():
        cells = [f"`{name}`", f"{m['value']:g}", m["unit"], m["goal"], m["measured_at"], m.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
