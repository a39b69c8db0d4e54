"""Jobs on the test bed, through the console's own CLI (`gantry ... --json`): a spec of the
barrier stand-in across the bed's hosts, and waiting on a job's report."""

from __future__ import annotations

import contextlib
import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from console.cli import main
from tests.netbed.bed import Netbed

BARRIER_RANK = Path(__file__).resolve().parent / "barrier_rank.py"
Report = dict[str, Any]


def cli(args: list[str]) -> tuple[int, str]:
    """`gantry ARGS`, in this process; (exit code, stdout)."""
    out = io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code
    return (code if isinstance(code, int) else 1), out.getvalue()


def barrier_spec(
    bed: Netbed, folder: Path, name: str, collective_timeout_s: float, **extra: Any
) -> Path:
    """A job of one barrier rank per host, a checkpoint every 5 steps into `folder`/ckpt
    (every host sees it: the namespaces share the filesystem, as nodes share NFS)."""
    ckpt = folder / "ckpt"
    spec: dict[str, Any] = {
        "name": name,
        "nodes": [f"{h.name} slots=1" for h in bed.hosts],
        "command": ["python", str(BARRIER_RANK)],
        "args": ["--checkpoint-dir", str(ckpt), "--step-s", "0.1", "--save-every", "5"],
        "working_dir": str(folder),
        "checkpoint_dir": str(ckpt),
        "collective_timeout_s": collective_timeout_s,
        "restart": {"max_restarts": 0, "backoff_s": 0.2},
    }
    spec.update(extra)
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def cluster_of(bed: Netbed, nodes: list[str]) -> Path:
    """A cluster file of only `nodes` (the bed's TLS files): a console that asks a job's
    leader alone does not wait out a cut node's timeouts."""
    doc = yaml.safe_load(bed.cluster_file.read_text())
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] in nodes]
    path = bed.cluster_file.with_name(f"cluster-{'-'.join(nodes)}.yaml")
    path.write_text(yaml.safe_dump(doc))
    return path


def job_report(bed: Netbed, name: str, cluster: Path | None = None) -> Report:
    cluster = cluster or bed.cluster_file
    code, out = cli(["--cluster", str(cluster), "job", name, "--json"])
    assert code == 0, out
    report: Report = json.loads(out)
    return report


def wait_report(
    bed: Netbed,
    name: str,
    ok: Callable[[Report], bool],
    timeout_s: float,
    what: str,
    cluster: Path | None = None,
) -> Report:
    deadline = time.monotonic() + timeout_s
    while True:
        report = job_report(bed, name, cluster)
        if ok(report):
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"job {name}: {what} not within {timeout_s:g}s: {report}")
        time.sleep(0.3)


def state(report: Report) -> str:
    return str(report["job"].get("state", "JOB_STATE_UNSPECIFIED"))


def last_attempt(report: Report) -> Report:
    attempts: list[Report] = report["job"].get("attempts", [])
    return attempts[-1] if attempts else {}


def min_step(report: Report) -> int:
    """The lowest step the last attempt's ranks reported (0: one has reported none)."""
    ranks = last_attempt(report).get("ranks", [])
    return min((int(r.get("metrics", {}).get("step", 0)) for r in ranks), default=0)


def launch(bed: Netbed, spec: Path) -> None:
    code, out = cli(["--cluster", str(bed.cluster_file), "launch", str(spec)])
    assert code == 0, out


def stop(bed: Netbed, name: str) -> None:
    code, out = cli(["--cluster", str(bed.cluster_file), "stop", name])
    assert code == 0, out


def checkpoint_step(latest: Path) -> int:
    """The step `latest` names (0: none yet)."""
    try:
        return int(latest.read_text().strip().removeprefix("step"))
    except (OSError, ValueError):
        return 0


def resumed_step(bed: Netbed, name: str, rank: int) -> int:
    """The step the latest attempt's `rank` says it resumed at (its log's first line)."""
    code, out = cli(["--cluster", str(bed.cluster_file), "logs", name, "--rank", str(rank)])
    assert code == 0, out
    match = re.search(r"resumed at (\d+)", out)
    assert match, out
    return int(match.group(1))
