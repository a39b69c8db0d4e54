"""Failover: how fast two Gantry agents get a 2-rank DeepSpeed job going again after
one rank is SIGKILLed, and after a whole node is lost with a hot spare to take its ranks.

Two real `gantry-agent` processes (node-a, node-b, one rank each) run `python -m
agent.train` on the CPU accelerator (tiny model, checkpoints every --save-steps, restart
policy {max_restarts: 1, backoff_s: 0, resume: latest}). Once both ranks have reported
steps past a checkpoint, the bench SIGKILLs rank 1's training process (the child of its
rank wrapper) and measures, per run:

- kill -> all stopped: until every process of attempt 1 (both wrappers and everything
  below them) has exited; a zombie waiting to be reaped counts as exited;
- kill -> next step, less the model's own start-up: (kill -> first metrics record of
  attempt 2) - (attempt 2's last rank start -> that record), the rank start being its
  RANK_STARTED event; i.e. what Gantry adds between the kill and the new ranks running;
- the step numbers: attempt 1's last step, the checkpoint attempt 2 resumed from, and
  attempt 2's first step (which must be the checkpoint's step + 1).

    .venv/bin/python bench/failover.py [--runs 3] [--model tiny-moe] [--save-steps 5]
        [--kill-after 2] [--micro-batch 4] [--grad-accum 1] [--threads 1] [--keep] [--fake]
        [--cold]

The kill comes once both agents' standbys for the next attempt are ready (a failure comes
long after a start); --cold turns standbys off (GANTRY_STANDBY=0), every rank starting cold.

--fake runs tests/fixtures/fake_rank.py instead of the trainer (no DeepSpeed, no
checkpoints: only the timings mean something). Every process the bench starts is
stopped on exit, Ctrl-C or error.

- kill -> next step, raw: everything included (the new ranks' start-up too).

Then as many hot-spare runs (bench/failover_replace.py): a third agent, node-c, is the
job's spare; node-b's agent and its rank are SIGKILLed together, and the next attempt runs
rank 1 on node-c at the same world size from the checkpoint as it is:

- replace -> next step, less model start-up: (kill -> the spare's first metrics record) -
  (the spare's rank start -> that record). Goal: <= 5 s.

Last line: {"kill_to_all_stopped_s": ..., "kill_to_next_step_s": ...,
"kill_to_next_step_raw_s": ..., "replace_to_next_step_s": ...,
"replace_to_next_step_raw_s": ...} (medians)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.failover_cluster import (  # noqa: E402
    EXTENSIONS_DIR,
    NODES,
    _raise_interrupt,
    prepare_data,
    run_main,
    stop_agents,
)
from bench.failover_replace import ReplaceRun  # noqa: E402
from bench.failover_scenarios import Run, measure  # noqa: E402
from console.net.local_agents import LocalAgent, start_agent  # noqa: E402

# -- report -----------------------------------------------------------------------------------


def report(
    args: argparse.Namespace, runs: list[Run], replaced: list[ReplaceRun]
) -> dict[str, float]:
    what = "fake_rank.py" if args.fake else f"agent.train {args.model}"
    print()
    print(
        f"failover: 2 agents x 1 rank, {what}, micro-batch {args.micro_batch} x "
        f"accumulation {args.grad_accum}, checkpoint every {args.save_steps} steps, "
        f"SIGKILL of rank 1 {args.kill_after}+ steps past a checkpoint, {len(runs)} run(s)"
    )
    head = (
        f"{'run':>3} {'kill->stopped s':>15} {'kill->step s':>12} {'start-up s':>10} "
        f"{'net s':>7} {'killed@':>7} {'last(1)':>7} {'ckpt':>5} {'first(2)':>8} "
        f"{'continues':>9} {'replayed':>8} {'replay loss rel diff':>20} {'standby':>7}"
    )
    print(head)
    for r in runs:
        print(
            f"{r.number:>3} {r.kill_to_all_stopped_s:15.3f} {r.kill_to_first_step_s:12.3f} "
            f"{r.startup_s:10.3f} {r.kill_to_next_step_s:7.3f} {r.killed_at_step:>7} "
            f"{r.last_step_1:>7} {r.resumed_step:>5} {r.first_step_2:>8} "
            f"{'yes' if r.continues else 'NO':>9} {r.replayed:>8} {r.replay_rel_diff:20.3g} "
            f"{'yes' if r.standby else 'no':>7}"
        )
    print()
    print("timeline of the last run (seconds after the kill; leader's journal + this bench):")
    for offset, label in runs[-1].timeline:
        print(f"  {offset:+8.3f}  {label}")
    stopped = [r.kill_to_all_stopped_s for r in runs]
    net = [r.kill_to_next_step_s for r in runs]
    raw = [r.kill_to_first_step_s for r in runs]
    startup = [r.startup_s for r in runs]
    print()
    print(f"{'figure':44} {'median':>8} {'max':>8} {'goal':>6}")
    for label, values, goal in (
        ("kill -> every attempt-1 process gone (s)", stopped, "<= 2"),
        ("kill -> next step, less model start-up (s)", net, "<= 5"),
        ("kill -> next step, raw (s)", raw, "<= 5"),
        ("model start-up of attempt 2 (s)", startup, ""),
    ):
        print(f"{label:44} {statistics.median(values):8.3f} {max(values):8.3f} {goal:>6}")
    spare_net = [r.replace_to_next_step_s for r in replaced]
    spare_raw = [r.kill_to_spare_step_s for r in replaced]
    for label, values, goal in (
        ("node lost -> spare's step, less start-up (s)", spare_net, "<= 5"),
        ("node lost -> spare's step, raw (s)", spare_raw, ""),
        ("model start-up on the spare (s)", [r.startup_s for r in replaced], ""),
    ):
        print(f"{label:44} {statistics.median(values):8.3f} {max(values):8.3f} {goal:>6}")
    every = all(r.continues for r in runs)
    print(f"attempt 2 continues from the checkpoint in every run: {'yes' if every else 'NO'}")
    same = all(r.same_world and r.replaced_nodes == "node-b=node-c" for r in replaced)
    said = "yes" if same else "NO"
    print(f"the spare ran node-b's rank at the same world size in every run: {said}")
    return {
        "kill_to_all_stopped_s": round(statistics.median(stopped), 3),
        "kill_to_next_step_s": round(statistics.median(net), 3),
        "kill_to_next_step_raw_s": round(statistics.median(raw), 3),
        "replace_to_next_step_s": round(statistics.median(spare_net), 3),
        "replace_to_next_step_raw_s": round(statistics.median(spare_raw), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="tiny-moe", help="tiny-moe, tiny-mixtral, tiny-dense")
    parser.add_argument("--save-steps", type=int, default=5)
    parser.add_argument(
        "--kill-after", type=int, default=2, help="steps past the checkpoint before the kill"
    )
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="per rank"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--fake", action="store_true", help="tests/fixtures/fake_rank.py")
    parser.add_argument(
        "--cold", action="store_true", help="no standbys: every attempt's ranks start cold"
    )
    args = parser.parse_args()
    if args.runs < 1 or args.save_steps < 2 or args.kill_after < 1:
        parser.error("--runs and --kill-after must be >= 1, --save-steps >= 2")

    signal.signal(signal.SIGTERM, _raise_interrupt)
    root = Path(tempfile.mkdtemp(prefix="gantry-failover-"))
    agents: dict[str, LocalAgent] = {}
    try:
        data = root / "no-data" if args.fake else prepare_data(root, args.max_length)
        for node in (*NODES, "node-c"):  # node-c: the spare of the hot-spare runs
            agents[node] = start_agent(
                node,
                root / "agents" / node,
                extra_args=["--torch-extensions-dir", str(EXTENSIONS_DIR)],
            )
        runs, replaced = asyncio.run(measure(args, agents, root, data))
    finally:
        stop_agents(list(agents.values()), root)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    figures = report(args, runs, replaced)
    print(json.dumps(figures))


if __name__ == "__main__":
    run_main(main)
