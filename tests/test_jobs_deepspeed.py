"""A real 2-rank DeepSpeed job (tiny MoE, ZeRO-3, gloo on CPU) run by two agents on
127.0.0.1, one rank each, through a whole life.

Each DeepSpeed start costs ~30 s on 2 cores, so the failures happen one after another
to one job, one test per phase (the tests run in file order; each needs the one before):

1. attempt 1 trains; node-b's agent is SIGKILLed and restarted: its rank never stops
   and no metric line is lost;
2. `kill -9` of rank 1's trainer: every rank stops, attempt 2 resumes from the latest
   checkpoint and its steps continue from it;
3. SIGSTOP of rank 1: the hang is found within hang_timeout_s + 5 s with the rank's
   stacks, and attempt 3 resumes;
4. `gantry restart --exclude node-b`: attempt 4 goes on with one rank from a universal
   checkpoint and trains to max_steps; the loss fell over the whole job;
5. continual training across world sizes: a second job, on both nodes, starts from the
   first one's last checkpoint (written by one rank) on new data; the leader converts it to
   a universal checkpoint first (DeepSpeed refuses a plain one at another world size).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from gantry.v1 import job_pb2

from agent.jobs.journal import Journal
from agent.rank import demo_data
from console.net.cluster_file import dump_cluster_file
from console.net.local_agents import LocalAgent, start_agent, stop_all
from tests.conftest import kill_processes_mentioning
from tests.deepspeed_env import DEEPSPEED_ENV, ROOT
from tests.test_cli import run_cli

METRICS = job_pb2.JobEventKind.JOB_EVENT_KIND_METRICS
JOB = "ds-job"
# Attempt 4 trains on one rank from where attempt 3 is restarted (step 30-50 on 2 cores: the
# ranks train on through the fixed waits of tests 1 and 3, the agent's restart and the hung
# rank's stack dump) to MAX_STEPS: room for a CPU twice as fast. The loss falls by more
# than 1.0 (as test 4 checks) within the first 10 steps.
MAX_STEPS = 100
SAVE_STEPS = 5
HANG_TIMEOUT_S = 10
START_TIMEOUT_S = 240  # two ranks importing torch and DeepSpeed on 2 busy cores


@dataclass
class Cluster:
    base: Path
    file: Path
    agents: dict[str, LocalAgent]
    out: Path
    capsys: pytest.CaptureFixture[str] | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    def cli(self, *args: str) -> tuple[int, str, str]:
        assert self.capsys is not None
        return run_cli([*args, "--cluster", str(self.file)], self.capsys)

    def job(self, name: str = JOB) -> dict[str, Any]:
        code, out, err = self.cli("job", name, "--json")
        assert code == 0, err
        job: dict[str, Any] = json.loads(out)["job"]
        return job

    def wait(
        self, what: str, check: Callable[[dict[str, Any]], bool], timeout: float, name: str = JOB
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(name)
            if check(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {json.dumps(job)[-3000:]}")
            time.sleep(0.25)

    def events(self, name: str = JOB) -> list[dict[str, Any]]:
        code, out, err = self.cli("events", name, "--json")
        assert code == 0, err
        return [json.loads(line) for line in out.splitlines()]

    def steps(self, node: str, rank: int, attempt: int, name: str = JOB) -> list[int]:
        """The steps of one rank's metric records in one attempt, from the node's journal."""
        journal = Journal.open(self.agents[node].data_dir)
        try:
            events = journal.events_after(0, name, kinds=[METRICS])
        finally:
            journal.close()
        return [
            int(e.metrics.step)
            for e in events
            if e.rank == rank and e.attempt == attempt and e.node == node
        ]

    def losses(self, node: str, name: str = JOB) -> list[tuple[int, int, float]]:
        """(attempt, step, loss) of every metric record in the node's journal."""
        journal = Journal.open(self.agents[node].data_dir)
        try:
            events = journal.events_after(0, name, kinds=[METRICS])
        finally:
            journal.close()
        return [(e.attempt, int(e.metrics.step), e.metrics.loss) for e in events if e.node == node]


def attempt(job: dict[str, Any], number: int) -> dict[str, Any] | None:
    found = [a for a in job.get("attempts", []) if a.get("number") == number]
    return found[0] if found else None


def rank_of(att: dict[str, Any], rank: int) -> dict[str, Any]:
    return next(r for r in att["ranks"] if r.get("rank", 0) == rank)


def step_of(att: dict[str, Any] | None, rank: int) -> int:
    if att is None:
        return -1
    ranks = [r for r in att.get("ranks", []) if r.get("rank", 0) == rank]
    return int(ranks[0].get("metrics", {}).get("step", -1)) if ranks else -1


def stepping(number: int, at_least: int, ranks: tuple[int, ...] = (0, 1)) -> Callable[..., bool]:
    def check(job: dict[str, Any]) -> bool:
        att = attempt(job, number)
        return all(step_of(att, r) >= at_least for r in ranks)

    return check


def trainer_of(att: dict[str, Any], rank: int) -> psutil.Process:
    """The rank's trainer: the only child of its rank wrapper (whose pid is reported)."""
    children = psutil.Process(rank_of(att, rank)["pid"]).children()
    assert len(children) == 1, children
    return children[0]


def resumed_step(att: dict[str, Any]) -> int:
    tag = Path(att["resumedFrom"]).name
    return int(tag.removeprefix("step").removesuffix("_universal"))


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


def write_spec(path: Path, name: str, nodes: list[str], args: list[str], out: Path) -> Path:
    spec = {
        "name": name,
        "nodes": nodes,
        "command": ["python", "-m", "agent.train"],
        "args": args,
        # fp32 on every CPU: bf16 where it is native would change the losses checked here
        "env": {**DEEPSPEED_ENV, "OMP_NUM_THREADS": "1", "GANTRY_CPU_BF16": "0"},
        "working_dir": str(ROOT),
        "restart": {"max_restarts": 3, "backoff_s": 0, "resume": "latest"},
        "hang_timeout_s": HANG_TIMEOUT_S,
        "collective_timeout_s": 60,
        "checkpoint_dir": str(out / "checkpoints"),
    }
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def trainer_args(data: Path, out: Path, max_steps: int) -> list[str]:
    return [
        "--deepspeed_config",
        "examples/ds_config_zero3.json",
        "--model_name_or_path",
        "tiny-moe",
        "--data",
        str(data),
        "--output_dir",
        str(out),
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "1",
        "--learning_rate",
        "3e-3",
        "--warmup_steps",
        "2",
        "--lr_scheduler_type",
        "constant",
        "--save_steps",
        str(SAVE_STEPS),
        "--max_steps",
        str(max_steps),
        "--max_length",
        "128",
        "--seed",
        "1",
        "--resume_from_checkpoint",
        "latest",
    ]


@pytest.fixture(scope="module")
def cluster(
    deepspeed_warm: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("dsjob")
    demo_data.write_demo(base / "demo", n_train=300, n_heldout=10, seed=1)
    agents = {n: start_agent(n, base / "agents" / n) for n in ("node-a", "node-b")}
    file = base / "cluster.yaml"
    dump_cluster_file(file, [a.target for a in agents.values()])
    c = Cluster(base, file, agents, base / "out")
    try:
        yield c
    finally:
        stop_all(list(c.agents.values()))
        kill_processes_mentioning(str(base))


@pytest.fixture
def c(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> Iterator[Cluster]:
    cluster.capsys = capsys
    yield cluster
    cluster.capsys = None


def test_1_job_trains_and_survives_its_agent_restarting(c: Cluster) -> None:
    spec = write_spec(
        c.base / "job.yaml",
        JOB,
        ["node-a slots=1", "node-b slots=1"],
        trainer_args(c.base / "demo" / "train.jsonl", c.out, MAX_STEPS),
        c.out,
    )
    code, out, err = c.cli("launch", str(spec))
    assert code == 0, err
    assert "submitted to node-a" in out
    job = c.wait("attempt 1 to step", stepping(1, 3), START_TIMEOUT_S)
    first = attempt(job, 1)
    assert first is not None
    pids = {r["node"]: r["pid"] for r in first["ranks"]}
    agent = c.agents["node-b"]
    port = int(agent.address.rsplit(":", 1)[1])
    agent.process.kill()  # SIGKILL: no chance to clean up
    agent.process.wait()
    time.sleep(1.0)
    c.agents["node-b"] = start_agent("node-b", agent.data_dir, port)
    job = c.wait("steps after the agent restart", stepping(1, step_of(first, 1) + 15), 60)
    again = attempt(job, 1)
    assert again is not None and len(job["attempts"]) == 1  # the ranks never stopped
    assert {r["node"]: r["pid"] for r in again["ranks"]} == pids
    c.facts["agent_restarted"] = True


def test_2_kill_9_of_a_rank_restarts_all_from_the_checkpoint(c: Cluster) -> None:
    assert c.facts.get("agent_restarted"), "needs the test before"
    job = c.wait("a checkpoint and steps past it", stepping(1, 2 * SAVE_STEPS + 2), 60)
    first = attempt(job, 1)
    assert first is not None
    old = [psutil.Process(r["pid"]) for r in first["ranks"]]
    old += [p for proc in old for p in proc.children(recursive=True)]
    trainer_of(first, 1).kill()  # kill -9
    job = c.wait("attempt 2 to step", lambda j: step_of(attempt(j, 2), 1) > 0, START_TIMEOUT_S)
    first, second = attempt(job, 1), attempt(job, 2)
    assert first is not None and second is not None
    assert first["state"] == "JOB_STATE_FAILED"
    assert "rank 1 on node-b failed" in first["reason"]
    assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in old)
    resumed = resumed_step(second)
    assert resumed >= 2 * SAVE_STEPS and resumed % SAVE_STEPS == 0
    assert Path(second["resumedFrom"]).parent == c.out / "checkpoints"
    assert second["masterPort"] != first["masterPort"]
    job = c.wait("attempt 2 to step", stepping(2, resumed + 3), 60)
    for node, rank in (("node-a", 0), ("node-b", 1)):
        # Attempt 1: every step of the rank once, across node-b's agent restart.
        steps = c.steps(node, rank, 1)
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= resumed, (node, steps)
        # Attempt 2 continues from the checkpoint's step.
        assert c.steps(node, rank, 2)[:3] == [resumed + 1, resumed + 2, resumed + 3]
    c.facts["resumed_2"] = resumed


def test_3_sigstop_is_found_as_a_hang_with_stacks(c: Cluster) -> None:
    assert "resumed_2" in c.facts, "needs the test before"
    job = c.wait("attempt 2 to step", stepping(2, c.facts["resumed_2"] + 4), 60)
    second = attempt(job, 2)
    assert second is not None
    trainer = trainer_of(second, 1)
    stopped_at = time.time()
    trainer.suspend()  # SIGSTOP
    job = c.wait("attempt 3 to step", lambda j: step_of(attempt(j, 3), 1) > 0, START_TIMEOUT_S + 30)
    second = attempt(job, 2)
    assert second is not None and "hung" in second["reason"]
    events = c.events()
    hung = [
        e for e in events if e.get("kind") == "JOB_EVENT_KIND_RANK_HUNG" and e.get("attempt") == 2
    ]
    assert hung and hung[0]["rank"] == 1 and hung[0]["node"] == "node-b"
    assert event_time(hung[0]) - stopped_at < HANG_TIMEOUT_S + 5
    failed = [
        e
        for e in events
        if e.get("kind") == "JOB_EVENT_KIND_RANK_FAILED"
        and e.get("attempt") == 2
        and e.get("rank") == 1
    ]
    stacks = failed[0]["details"]["stacks"]
    assert "agent/rank/train.py" in stacks and "in train" in stacks, stacks[-2000:]
    third = attempt(job, 3)
    assert third is not None and resumed_step(third) >= c.facts["resumed_2"]
    c.facts["resumed_3"] = resumed_step(third)


def test_4_exclude_goes_on_with_one_rank_from_a_universal_checkpoint(c: Cluster) -> None:
    assert "resumed_3" in c.facts, "needs the test before"
    c.wait("attempt 3 to step", stepping(3, c.facts["resumed_3"] + 2), 60)
    code, out, err = c.cli("restart", JOB, "--exclude", "node-b")
    assert code == 0, err
    assert f"{JOB}: restart accepted without node-b; attempt 4 starts" in out, out
    job = c.wait(
        "the job to finish", lambda j: j.get("state") == "JOB_STATE_SUCCEEDED", START_TIMEOUT_S
    )
    fourth = attempt(job, 4)
    assert fourth is not None and fourth["state"] == "JOB_STATE_SUCCEEDED"
    assert fourth["excludedNodes"] == ["node-b"]
    assert [(r.get("rank", 0), r["node"]) for r in fourth["ranks"]] == [(0, "node-a")]
    assert fourth["resumedFrom"].endswith("_universal")
    resumed = resumed_step(fourth)
    assert c.steps("node-a", 0, 4) == list(range(resumed + 1, MAX_STEPS + 1))
    code, log, _ = c.cli("logs", JOB, "--rank", "0")
    assert code == 0
    assert "as universal" in log and f"at step {resumed}" in log and "on 1 rank(s)" in log
    losses = c.losses("node-a")
    first_loss, last_loss = losses[0][2], losses[-1][2]
    assert (losses[0][:2], losses[-1][:2]) == ((1, 1), (4, MAX_STEPS))
    assert last_loss < first_loss - 1.0, (first_loss, last_loss)
    c.facts["final_loss"] = last_loss
    c.facts["first_loss"] = first_loss


def test_5_continual_training_from_another_jobs_checkpoint_on_new_data(c: Cluster) -> None:
    assert "final_loss" in c.facts, "needs the test before"
    checkpoint = c.out / "checkpoints" / f"step{MAX_STEPS}"
    assert checkpoint.is_dir()
    demo_data.write_demo(c.base / "fresh", n_train=200, n_heldout=10, seed=7)
    out2 = c.base / "out2"
    args = trainer_args(c.base / "fresh" / "train.jsonl", out2, MAX_STEPS + 5)
    args[-1] = str(checkpoint)  # --resume_from_checkpoint
    nodes = ["node-a slots=1", "node-b slots=1"]  # 2 ranks; the checkpoint is of 1
    spec = write_spec(c.base / "job2.yaml", "ds-continue", nodes, args, out2)
    code, _, err = c.cli("launch", str(spec))
    assert code == 0, err
    job = c.wait(
        "the job to finish",
        lambda j: j.get("state") in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"),
        START_TIMEOUT_S,
        name="ds-continue",
    )
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert len(job["attempts"]) == 1
    steps = c.steps("node-a", 0, 1, name="ds-continue")
    assert steps == list(range(MAX_STEPS + 1, MAX_STEPS + 6))
    assert job["attempts"][0]["resumedFrom"] == f"{checkpoint}_universal"
    assert c.steps("node-b", 1, 1, name="ds-continue") == list(range(MAX_STEPS + 1, MAX_STEPS + 6))
    code, log, _ = c.cli("logs", "ds-continue", "--rank", "0")
    assert f"resumed from {checkpoint}_universal at step {MAX_STEPS}" in log
    assert "as universal" in log and "on 2 rank(s)" in log
    assert "trained on other data: this data starts at its beginning" in log
    # The new data was tokenized with the ids the weights learned, not a new tokenizer.
    manifest = json.loads((out2 / "data" / "manifest.json").read_text())
    assert manifest["tokenizer_source"] == str((c.out / "checkpoints" / "tokenizer").resolve())
    loss = c.losses("node-a", name="ds-continue")[0][2]
    assert loss < c.facts["first_loss"] - 1.0, (loss, c.facts)
    assert (out2 / "checkpoints" / "latest").read_text().strip() == f"step{MAX_STEPS + 5}"
