"""console.model.advisor: each rule fires on its recorded case and stays quiet on a healthy run."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import pytest

from console.model.advisor import (
    DEFAULT_THRESHOLDS,
    AdvisorInput,
    Failure,
    Finding,
    GpuPoint,
    LogHit,
    MetricPoint,
    Thresholds,
    evaluate,
    grad_spike,
    input_bound,
    interruptions,
    loss_scale_collapse,
    nan_loss,
    network_bound,
    oom,
    straggler,
)
from tests.fixtures.advisor.make_streams import HERE, STREAMS, load, render

DAY = 86400.0

EXPECTED: dict[str, set[str]] = {
    "healthy": set(),
    "input_bound": {"input-bound"},
    "network_bound": {"network-bound", "raise-grad-accum"},
    "grad_spike": {"grad-spike"},
    "loss_scale_collapse": {"loss-scale-collapse"},
    "nan_loss": {"nan-loss"},
    "oom_cuda": {"oom"},
    "oom_host": {"oom"},
    "interruptions": {"interruptions"},
    "straggler": {"straggler"},
}


def stream(name: str) -> AdvisorInput:
    return load(HERE / f"{name}.jsonl")


def only(findings: list[Finding], rule: str) -> Finding:
    matching = [f for f in findings if f.rule == rule]
    assert len(matching) == 1, findings
    return matching[0]


def point(
    rank: int = 0,
    step: int = 0,
    *,
    time: float | None = None,
    node: str = "node-a",
    loss: float | None = 2.0,
    grad_norm: float | None = 1.0,
    loss_scale: float | None = None,
    step_time_s: float | None = 1.0,
    collective_time_s: float | None = 0.05,
) -> MetricPoint:
    return MetricPoint(
        rank=rank,
        node=node,
        step=step,
        time=float(step) if time is None else time,
        loss=loss,
        grad_norm=grad_norm,
        loss_scale=loss_scale,
        step_time_s=step_time_s,
        collective_time_s=collective_time_s,
        tokens_per_s=None,
    )


def given(
    metrics: Sequence[MetricPoint] = (),
    *,
    gpus: Sequence[GpuPoint] = (),
    log_hits: Sequence[LogHit] = (),
    failures: Sequence[Failure] = (),
    now: float = 100.0,
    running: bool = True,
    micro_batch: int | None = 8,
    grad_accum: int | None = 2,
    fp16: bool = False,
    started: float | None = None,
) -> AdvisorInput:
    return AdvisorInput(
        metrics=metrics,
        gpus=gpus,
        log_hits=log_hits,
        failures=failures,
        now=now,
        running=running,
        micro_batch=micro_batch,
        grad_accum=grad_accum,
        fp16=fp16,
        started=started,
    )


# --- the recorded streams -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_recorded_streams_are_what_the_script_writes(name: str) -> None:
    assert (HERE / f"{name}.jsonl").read_text() == render(STREAMS[name]())


def test_every_stream_is_tested() -> None:
    assert set(EXPECTED) == set(STREAMS)
    assert {p.stem for p in HERE.glob("*.jsonl")} == set(STREAMS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_case_fires_its_rules_and_no_other(name: str) -> None:
    findings = evaluate(stream(name))
    assert {f.rule for f in findings} == EXPECTED[name]
    for finding in findings:
        assert "\n" not in finding.evidence and finding.evidence
        assert finding.severity in ("warning", "critical")
        assert finding.remedy is not None and finding.remedy.summary and finding.remedy.details


def test_healthy_run_has_the_shape_the_brief_asks_for() -> None:
    inp = stream("healthy")
    assert len({m.rank for m in inp.metrics}) == 4
    assert len({m.step for m in inp.metrics}) == 200
    assert 93 < sum(g.util_percent for g in inp.gpus) / len(inp.gpus) < 97
    assert inp.log_hits  # a harmless matched line, which is no OOM


def test_input_bound_evidence() -> None:
    finding = only(evaluate(stream("input_bound")), "input-bound")
    assert finding.severity == "warning"
    assert finding.evidence.startswith("GPU util 42% mean on node-a over the last 60 s")
    assert "(threshold 85%)" in finding.evidence and "also node-b 62%" in finding.evidence
    assert finding.remedy is not None and finding.remedy.kind == "advice"
    assert "dataloader" in finding.remedy.summary and "storage" in finding.remedy.summary


def test_network_bound_and_raise_grad_accum() -> None:
    findings = evaluate(stream("network_bound"))
    network = only(findings, "network-bound")
    assert "collectives took 31% of step time over steps 80-99" in network.evidence
    assert network.remedy is not None and network.remedy.kind == "advice"
    for word in ("NCCL_SOCKET_IFNAME", "NCCL_IB_DISABLE", "sockets", "topology"):
        assert word in network.remedy.details
    accum = only(findings, "raise-grad-accum")
    assert accum.remedy is not None and accum.remedy.kind == "set-grad-accum"
    assert accum.remedy.params == {"gradient_accumulation_steps": "4"}


@pytest.mark.parametrize(("grad_accum", "offered"), [(None, False), (32, True), (33, False)])
def test_raise_grad_accum_only_when_it_can_rise(grad_accum: int | None, offered: bool) -> None:
    inp = dataclasses.replace(stream("network_bound"), grad_accum=grad_accum)
    rules = {f.rule for f in evaluate(inp)}
    assert "network-bound" in rules
    assert ("raise-grad-accum" in rules) is offered


def test_network_bound_counts_the_transfer_not_the_wait_for_a_straggler() -> None:
    # In the straggler stream three ranks wait 50% of each step, but only for rank 3.
    inp = stream("straggler")
    waits = [
        (m.collective_time_s or 0.0) / (m.step_time_s or 1.0)
        for m in inp.metrics
        if m.rank == 0 and m.step > 30
    ]
    assert min(waits) > 0.4
    assert network_bound(inp, DEFAULT_THRESHOLDS) == []


def test_grad_spike_evidence() -> None:
    finding = only(evaluate(stream("grad_spike")), "grad-spike")
    assert finding.evidence.startswith("grad norm 30 at step 92 on rank 0 (node-a)")
    assert "previous 50 steps (threshold 6)" in finding.evidence
    assert finding.remedy is not None and finding.remedy.kind == "lower-lr"
    assert "bf16" in finding.remedy.details and "clipping" in finding.remedy.details


def test_grad_spike_ages_out_of_the_recent_steps() -> None:
    inp = stream("grad_spike")  # spike at step 92 of 0-99: 8 steps ago
    assert grad_spike(inp, Thresholds(recent_steps=8)) != []
    assert grad_spike(inp, Thresholds(recent_steps=7)) == []


def test_grad_spike_needs_a_baseline_with_spread() -> None:
    flat = [point(0, s, grad_norm=1.0) for s in range(60)] + [point(0, 60, grad_norm=5.0)]
    assert grad_spike(given(flat), DEFAULT_THRESHOLDS) == []  # no spread: no z-score
    few = [point(0, s, grad_norm=1.0 + 0.01 * (s % 3)) for s in range(9)]
    assert grad_spike(given([*few, point(0, 9, grad_norm=50.0)]), DEFAULT_THRESHOLDS) == []
    # MAD 0 (most values equal) falls back to the mean absolute deviation.
    mostly = [point(0, s, grad_norm=2.0 if s % 10 == 0 else 1.0) for s in range(50)]
    spiked = given([*mostly, point(0, 50, grad_norm=9.0)])
    assert only(grad_spike(spiked, DEFAULT_THRESHOLDS), "grad-spike").evidence.startswith(
        "grad norm 9 at step 50"
    )
    # A drop is no spike, and non-finite norms are left to the loss-scale and NaN rules.
    noisy = [point(0, s, grad_norm=1.0 + 0.05 * math.sin(s)) for s in range(50)]
    assert grad_spike(given([*noisy, point(0, 50, grad_norm=0.01)]), DEFAULT_THRESHOLDS) == []
    assert grad_spike(given([*noisy, point(0, 50, grad_norm=math.inf)]), DEFAULT_THRESHOLDS) == []


def test_loss_scale_collapse_evidence_and_floor() -> None:
    inp = stream("loss_scale_collapse")
    finding = only(evaluate(inp), "loss-scale-collapse")
    assert finding.severity == "warning"
    assert finding.evidence.startswith("loss scale fell 256x, from 65536 to 256 at step 91")
    assert "(threshold 64x)" in finding.evidence
    assert finding.remedy is not None and finding.remedy.kind == "lower-lr"
    critical = Thresholds(loss_scale_floor=256)
    assert only(loss_scale_collapse(inp, critical), "loss-scale-collapse").severity == "critical"
    assert loss_scale_collapse(inp, Thresholds(loss_scale_collapse_factor=512)) == []


def test_nan_loss_is_critical_while_it_lasts() -> None:
    finding = only(evaluate(stream("nan_loss")), "nan-loss")
    assert finding.severity == "critical"
    assert finding.evidence.startswith("loss is nan on 2 of 2 ranks since step 95")
    assert "last finite loss" in finding.evidence
    assert finding.remedy is not None and finding.remedy.kind == "lower-lr"
    assert "bf16" not in finding.remedy.details  # this run is bf16 already
    recovered = [point(0, s, loss=math.inf if s == 5 else 2.0) for s in range(10)]
    finding = only(nan_loss(given(recovered), DEFAULT_THRESHOLDS), "nan-loss")
    assert finding.severity == "warning" and "loss is inf" in finding.evidence


def test_oom_cuda() -> None:
    finding = only(evaluate(stream("oom_cuda")), "oom")
    assert finding.severity == "critical" and finding.title == "GPU out of memory"
    assert finding.evidence.startswith("CUDA out of memory 71 s ago, rank 1 (node-b)")
    remedy = finding.remedy
    assert remedy is not None and remedy.kind == "halve-micro-batch"
    assert remedy.params == {
        "train_micro_batch_size_per_gpu": "8",
        "gradient_accumulation_steps": "2",
    }
    assert "activation checkpointing" in remedy.details and "offload" in remedy.details


def test_oom_host_from_a_failure_reason() -> None:
    finding = only(evaluate(stream("oom_host")), "oom")
    assert finding.title == "Host out of memory"
    assert "killed by SIGKILL: host out of memory" in finding.evidence
    # Host RAM: a smaller micro batch on the GPU is no fix (issue 15).
    assert finding.remedy is not None and finding.remedy.kind == "advice"
    assert "dataloader workers" in finding.remedy.summary
    assert "host ran out of RAM" in finding.remedy.details and "nvme" in finding.remedy.details


@pytest.mark.parametrize(
    ("line", "title"),
    [
        ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB", "GPU out of memory"),
        ("torch.OutOfMemoryError: CUDA error", "GPU out of memory"),
        ("[rank7]: Cuda failure 2 'out of memory'", "GPU out of memory"),
        ("node-a:4242:4300 [0] NCCL WARN Cuda failure 'out of memory'", "GPU out of memory"),
        ("Out of memory: Killed process 4242 (python) total-vm:123kB", "Host out of memory"),
        ("oom-kill:constraint=CONSTRAINT_NONE,task=python,pid=4242", "Host out of memory"),
    ],
)
def test_oom_log_lines(line: str, title: str) -> None:
    inp = given(log_hits=[LogHit(rank=2, node="node-b", time=40.0, line=line)])
    finding = only(oom(inp, DEFAULT_THRESHOLDS), "oom")
    assert finding.title == title and "60 s ago, rank 2 (node-b)" in finding.evidence


def test_oom_ignores_other_lines_and_failures() -> None:
    inp = given(
        log_hits=[LogHit(0, "node-a", 1.0, "NCCL WARN NET/IB : Got async event : port error")],
        failures=[Failure(2.0, "rank 0 (node-a) exited with code -9")],
    )
    assert oom(inp, DEFAULT_THRESHOLDS) == []


def test_oom_remedy_depends_on_the_micro_batch() -> None:
    hit = [LogHit(0, "node-a", 1.0, "CUDA out of memory")]
    at_one = only(oom(given(log_hits=hit, micro_batch=1), DEFAULT_THRESHOLDS), "oom").remedy
    assert at_one is not None and at_one.kind == "enable-gradient-checkpointing"
    assert "already 1" in at_one.summary and "--gradient_checkpointing" in at_one.details
    on = given(log_hits=hit, micro_batch=1)
    on = dataclasses.replace(on, gradient_checkpointing=True)
    last = only(oom(on, DEFAULT_THRESHOLDS), "oom").remedy
    assert last is not None and last.kind == "advice" and "offload" in last.details
    unknown = only(oom(given(log_hits=hit, micro_batch=None), DEFAULT_THRESHOLDS), "oom").remedy
    assert unknown is not None and unknown.kind == "halve-micro-batch"
    assert unknown.params == {"gradient_accumulation_steps": "4"}


def test_interruptions_evidence() -> None:
    finding = only(evaluate(stream("interruptions")), "interruptions")
    assert finding.evidence.startswith(
        "3 failures in the last 3.0 days, 7.0 a week (target under 1 a week)"
    )
    assert "2x 'rank 1 (node-b) exited with code 134'" in finding.evidence


def test_interruptions_scaling() -> None:
    now = 30 * DAY
    week_old = now - 7 * DAY

    def fired(failures: list[float], started: float | None) -> bool:
        inp = given(
            failures=[Failure(t, "rank 0 exited") for t in failures], now=now, started=started
        )
        return interruptions(inp, DEFAULT_THRESHOLDS) != []

    assert not fired([now - 60], started=now - 3600)  # one failure in a young job: no rate yet
    assert fired([now - 120, now - 60], started=now - 3600)  # two in an hour
    assert not fired([now - 2 * DAY], started=0.0)  # one a week is not over the target
    assert fired([now - 3 * DAY, now - 2 * DAY], started=0.0)  # two are
    assert not fired([week_old - DAY, week_old - 2 * DAY, now - DAY], started=0.0)  # old ones
    # Without `started`, the job's age is the earliest time in the input: 4 days here.
    inp = given(
        metrics=[point(0, 0, time=now - 4 * DAY)],
        failures=[Failure(now - 3 * DAY, "x"), Failure(now - 2 * DAY, "y")],
        now=now,
    )
    finding = only(interruptions(inp, DEFAULT_THRESHOLDS), "interruptions")
    assert finding.evidence.startswith("2 failures in the last 4.0 days, 3.5 a week")
    assert interruptions(inp, Thresholds(interruptions_per_week_max=4.0)) == []


def test_straggler_names_rank_and_node() -> None:
    finding = only(evaluate(stream("straggler")), "straggler")
    assert finding.title == "Rank 3 is a straggler"
    assert finding.evidence.startswith("rank 3 on node-b: compute time")
    assert "1.9x the other ranks' median 0.45 s" in finding.evidence
    assert "its collective wait 0.05 s is the lowest (the others' median 0.45 s)" in (
        finding.evidence
    )
    assert finding.remedy is not None and finding.remedy.params == {"rank": "3", "node": "node-b"}
    assert straggler(stream("straggler"), Thresholds(straggler_factor=2.0)) == []


def test_input_bound_needs_running_steps_and_coverage() -> None:
    inp = stream("input_bound")
    assert input_bound(inp, DEFAULT_THRESHOLDS) != []
    assert input_bound(dataclasses.replace(inp, running=False), DEFAULT_THRESHOLDS) == []
    stalled = [m for m in inp.metrics if m.time < inp.now - 60]
    assert input_bound(dataclasses.replace(inp, metrics=stalled), DEFAULT_THRESHOLDS) == []
    sparse = [g for g in inp.gpus if g.time < inp.now - 20]  # samples span under 80% of 60 s
    assert input_bound(dataclasses.replace(inp, gpus=sparse), DEFAULT_THRESHOLDS) == []
    assert input_bound(inp, Thresholds(gpu_util_min_percent=40)) == []
    assert input_bound(inp, Thresholds(gpu_util_window_s=120)) != []


def test_input_bound_does_not_count_a_restart() -> None:
    # oom_cuda: the GPUs idled 20 s between attempts; counted, they would look starved.
    inp = stream("oom_cuda")
    assert input_bound(inp, DEFAULT_THRESHOLDS) == []
    assert input_bound(dataclasses.replace(inp, failures=[]), DEFAULT_THRESHOLDS) != []


def test_evaluate_puts_critical_findings_first() -> None:
    inp = stream("network_bound")
    hit = LogHit(0, "node-a", inp.now - 5, "CUDA out of memory")
    findings = evaluate(dataclasses.replace(inp, log_hits=[hit]))
    assert [f.rule for f in findings] == ["oom", "network-bound", "raise-grad-accum"]


def test_evaluate_on_nothing() -> None:
    assert evaluate(given()) == []
    assert evaluate(given([point(0, 0)])) == []
