"""Issue 17's trainer rules without a rank: the parallel layout and its refusals, a rank's
coordinates, collective time per group, the DeepSpeed config for the layout, the trainer's
new flags and the peak memory figure."""

from __future__ import annotations

from pathlib import Path

import pytest
from gantry.v1 import job_pb2
from gantry.v1.parallelism import coordinates, layout_problem, spec_layout_problem
from gantry.v1.rules import ValidationError, validate_job_spec

from agent.rank.ds_config import Adapted, adapt_parallel
from agent.rank.parallel_plan import EXPERT_ENV, ParallelPlan, env_size, group_times
from agent.rank.peak_memory import peak_memory_bytes
from agent.rank.report import memory_bytes
from agent.rank.train import parse_args
from console.model.advisor_rules_failures import oom
from console.model.advisor_types import AdvisorInput, LogHit, Thresholds
from console.model.remedies import apply_remedy


def test_a_layout_that_fits_has_no_problem() -> None:
    assert layout_problem(64, 4, 8, 32) is None  # the guide's 67B: TP 4, EP 8, DP 2
    assert layout_problem(2, 0, 0) is None  # unset sizes mean 1


@pytest.mark.parametrize(
    ("world", "tensor", "expert", "experts", "message"),
    [
        (6, 4, 1, None, "tensor parallel 4 does not divide the world of 6 ranks"),
        (
            8,
            2,
            3,
            None,
            "expert parallel 3 does not divide the 4 data-parallel ranks (world 8 / tensor 2)",
        ),
        (6, 1, 3, 32, "expert parallel 3 does not divide the model's 32 experts"),
    ],
)
def test_a_bad_layout_names_its_numbers(
    world: int, tensor: int, expert: int, experts: int | None, message: str
) -> None:
    assert layout_problem(world, tensor, expert, experts) == message


def spec(slots: list[int], tensor: int, expert: int, model: str = "tiny-moe") -> job_pb2.JobSpec:
    s = job_pb2.JobSpec(
        name="p",
        command=["python", "-m", "agent.train"],
        args=[f"--model_name_or_path={model}"],
        working_dir="/w",
    )
    for i, n in enumerate(slots):
        s.nodes.add(node=f"node-{i}", slots=n)
    s.parallelism.tensor, s.parallelism.expert = tensor, expert
    return s


def test_the_contract_refuses_a_bad_layout_before_launch() -> None:
    validate_job_spec(spec([2, 2], 1, 4))
    with pytest.raises(ValidationError, match=r"^spec\.parallelism: expert parallel 3 "):
        validate_job_spec(spec([3, 3], 1, 3))  # 32 experts of tiny-moe
    assert spec_layout_problem(spec([3, 3], 1, 3, model="local/dir")) is None  # experts unknown
    plain = job_pb2.JobSpec(name="p", command=["x"], working_dir="/w")
    plain.nodes.add(node="a", slots=3)
    assert spec_layout_problem(plain) is None  # no parallelism: nothing to check


def test_coordinates_follow_deepspeeds_layout() -> None:
    # world 8, TP 2, EP 2: TP groups are consecutive ranks, EP groups consecutive data ranks.
    got = [coordinates(r, 2, 2) for r in range(8)]
    assert [(c.data, c.tensor, c.expert) for c in got] == [
        (0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1),
        (1, 0, 0), (1, 1, 0), (1, 0, 1), (1, 1, 1),
    ]  # fmt: skip
    plan = ParallelPlan(rank=3, world_size=4, tensor=1, expert=2)
    assert plan.coordinates() == {"data": 1, "tensor": 0, "expert": 1}
    assert plan.data == 2 and plan.parallel
    assert not ParallelPlan(0, 4).parallel


def test_collective_time_splits_by_group() -> None:
    ops = {"all_to_all_single": 0.25, "all_reduce": 0.5, "all_gather_into_tensor": 0.125}
    assert group_times(ops, tensor=1, data=2) == {"expert": 0.25, "data": 0.625}
    # All ranks in one tensor group: its all_reduce is the tensor layers'.
    assert group_times(ops, tensor=2, data=1) == {"expert": 0.25, "tensor": 0.5, "data": 0.125}
    assert group_times(None) is None
    assert group_times({}) == {}


def test_parallel_sizes_from_the_environment() -> None:
    assert env_size(EXPERT_ENV, {}) == 1
    assert env_size(EXPERT_ENV, {EXPERT_ENV: "4"}) == 4
    with pytest.raises(ValueError, match=f"^{EXPERT_ENV}='0': give a whole number >= 1$"):
        env_size(EXPERT_ENV, {EXPERT_ENV: "0"})


def test_the_config_for_experts_leaves_zero3_and_turns_autotp_on() -> None:
    zero3 = {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": 10, "x": 1}}
    moe = Adapted(zero3)
    adapt_parallel(moe, expert=2)
    assert moe.config["zero_optimization"] == {"stage": 2, "x": 1}
    assert moe.changes == [
        "zero_optimization.stage 3 -> 2: DeepSpeed's MoE layer (expert parallel 2) does not "
        "run under ZeRO stage 3"
    ]
    tp = Adapted({"zero_optimization": {"stage": 3}})
    adapt_parallel(tp, tensor=2)
    assert tp.config == {"zero_optimization": {"stage": 3}, "tensor_parallel": {"autotp_size": 2}}
    plain = Adapted({"zero_optimization": {"stage": 3}})
    adapt_parallel(plain)
    assert plain.config == {"zero_optimization": {"stage": 3}} and plain.changes == []


def test_gradient_checkpointing_flag_reads_as_hf_does(tmp_path: Path) -> None:
    cfg = tmp_path / "ds.json"
    cfg.write_text("{}")
    base = ["--deepspeed_config", str(cfg), "--model_name_or_path", "tiny-dense"]
    base += ["--output_dir", str(tmp_path), "--data", str(tmp_path)]
    assert parse_args(base).gradient_checkpointing is False
    assert parse_args([*base, "--gradient_checkpointing"]).gradient_checkpointing is True
    assert parse_args([*base, "--gradient_checkpointing", "false"]).gradient_checkpointing is False
    assert parse_args([*base, "--gradient_checkpointing=true"]).gradient_checkpointing is True
    args = parse_args([*base, "--expert_parallel_size", "2"])
    assert (args.expert_parallel_size, args.tensor_parallel_size) == (2, 1)
    with pytest.raises(SystemExit):
        parse_args([*base, "--expert_parallel_size", "0"])


def test_peak_memory_is_the_process_peak_on_a_cpu() -> None:
    resident = memory_bytes()  # this moment's resident set: the peak is at least it
    assert resident is not None
    block = bytearray(256 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touched: resident
    peak = peak_memory_bytes()
    assert peak is not None and peak >= resident + 200 * 2**20
    del block
    assert (peak_memory_bytes() or 0) >= peak  # a peak never falls


def test_the_oom_remedy_at_micro_batch_1_gives_args_the_trainer_takes(tmp_path: Path) -> None:
    cfg = tmp_path / "ds.json"
    cfg.write_text("{}")
    spec = job_pb2.JobSpec(name="j", command=["python", "-m", "agent.train"])
    spec.args.extend(
        [
            "--deepspeed_config",
            str(cfg),
            "--model_name_or_path",
            "tiny-moe",
            "--output_dir",
            str(tmp_path),
            "--data",
            str(tmp_path),
            "--per_device_train_batch_size",
            "1",
        ]
    )
    inp = AdvisorInput(
        metrics=[],
        gpus=[],
        log_hits=[LogHit(0, "node-a", 1.0, "torch.OutOfMemoryError: CUDA out of memory")],
        failures=[],
        now=10.0,
        running=True,
        micro_batch=1,
        grad_accum=1,
        fp16=False,
    )
    (finding,) = oom(inp, Thresholds())
    remedy = finding.remedy
    assert remedy is not None and remedy.kind == "enable-gradient-checkpointing"
    assert "micro batch is already 1" in remedy.summary
    edited = apply_remedy(remedy, spec)
    assert parse_args(list(edited.args)).gradient_checkpointing is True
