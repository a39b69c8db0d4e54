"""Reading what users' own training scripts print, from real lines of real runs: DeepSpeed
(0.1-0.19), Megatron-LM, Megatron-DeepSpeed, GPT-NeoX, nanotron, start-up phases, bounds
(Hugging Face's Trainer: tests/test_script_logs_hf*.py).

Each fixture line is copied from the source named beside it (a public issue thread, a public
repository's file, or a run of the installed libraries on this machine); only runs of fill
characters in progress bars and very long paths were shortened.
"""

from __future__ import annotations

import pytest
from gantry.v1 import job_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.jobs.metrics_records import GIB, RecordKind
from agent.jobs.node.script_logs import ScriptLogParser, megatron_metrics
from agent.jobs.node.script_logs_hf import LogDict, StepMatcher
from tests.script_log_helpers import feed, merged, metrics, phases

P = job_pb2.RankPhase

# --- DeepSpeed ------------------------------------------------------------------------------

# DeepSpeed 0.9.x (the era of the 0.9.5 pin): https://github.com/huggingface/accelerate/issues/1589
DS_09 = (
    "[2023-06-21 07:39:09,443] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward: 27.41 | backward: 73.44 | backward_inner: 50.99 | backward_allreduce: 22.40 | "
    "step: 72.82",
    "  3%|███" + " " * 86 + "| 12/345 [00:07<06:50,  1.23s/it][2023-06-21 07:39:09,625] [INFO] "
    "[logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | optimizer_allgather: 7.96 | "
    "optimizer_gradients: 0.02 | optimizer_step: 60.64",
    "[2023-06-21 07:39:09,625] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward_microstep: 27.48 | backward_microstep: 73.59 | backward_inner_microstep: 51.05 | "
    "backward_allreduce_microstep: 22.49 | step_microstep: 72.59",
    "[2023-06-21 07:39:09,626] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward: 27.46 | backward: 73.60 | backward_inner: 51.05 | backward_allreduce: 22.50 | "
    "step: 72.60",
)
# DeepSpeed 0.10-era ThroughputTimer + GPT-NeoX: https://github.com/deepspeedai/DeepSpeed/issues/3742
DS_NEOX = (
    "[2023-07-25 21:03:17,269] [INFO] [timer.py:215:stop] epoch=0/micro_step=34/global_step=34, "
    "RunningAvgSamplesPerSec=7.864669709950182, CurrSamplesPerSec=8.00912418308922, "
    "MemAllocated=59.65GB, MaxMemAllocated=63.31GB",
    "[2023-07-25 21:03:17,269] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward_microstep: 652.42 | backward_microstep: 2164.53 | backward_inner_microstep: "
    "2001.89 | backward_allreduce_microstep: 162.60 | step_microstep: 1172.13",
    "[2023-07-25 21:03:17,269] [INFO] [logging.py:96:log_dist] [Rank 0] rank=0 time (ms) | "
    "forward: 652.41 | backward: 2164.52 | backward_inner: 2001.89 | backward_allreduce: "
    "162.60 | step: 1172.13",
    " samples/sec: 7.799 | iteration       34/   10000 | elapsed time per iteration (ms): "
    "4103.1 | learning rate: 2.111E-06 | approx flops per GPU: 112.9TFLOPS | lm_loss: "
    "1.118665E+01 | number of skipped iterations:   0 | number of nan iterations:   0 |",
    "time (ms) | forward: 659.86 | backward: 2164.69 | backward-backward: 2164.66 | "
    "backward-allreduce: 0.00 | optimizer: 1172.51 | batch generator: 0.83",
    "[2023-07-25 21:03:21,037] [INFO] [logging.py:96:log_dist] [Rank 0] step=35, skipped=0, "
    "lr=[2.1731931451279077e-06, 2.1731931451279077e-06], mom=[[0.9, 0.95], [0.9, 0.95]]",
)
# DeepSpeed 0.7.7, launcher prefix: https://github.com/deepspeedai/DeepSpeed/issues/2629
DS_07 = (
    "stdout: [2022-12-20 08:26:26,101] [INFO] [timer.py:197:stop] 0/17, "
    "RunningAvgSamplesPerSec=158.31157878546472, CurrSamplesPerSec=159.628891629629, "
    "MemAllocated=1.75GB, MaxMemAllocated=2.6GB",
)
# DeepSpeed 0.5.x: https://github.com/deepspeedai/DeepSpeed/issues/1825
DS_05 = (
    "[2022-03-11 02:06:58,985] [INFO] [logging.py:69:log_dist] [Rank 0] step=40, skipped=2, "
    "lr=[5e-05], mom=[[0.9, 0.999]]",
    "[2022-03-11 02:06:58,985] [INFO] [timer.py:189:stop] 0/40, SamplesPerSec=83.48609168106144,"
    " MemAllocated=0.26GB, MaxMemAllocated=9.02GB",
)
# DeepSpeed 0.1/0.2 (2020, before log_dist): https://github.com/deepspeedai/DeepSpeed/issues/255
DS_02 = (
    ">[INFO 2020-06-08 06:02:19] 0/450, SamplesPerSec=7.458824487454903",
    "time (ms) | forward_microstep: 193.65 | backward_microstep: 329.25 | "
    "backward_inner_microstep: 329.14 | backward_allreduce_microstep: 0.05 | step_microstep: 0.92",
)
# DeepSpeed 0.12 + Megatron-DeepSpeed: argonne-lcf fork's ALCF/README.md, as mirrored in
# github.com/samanta-amit/Megatron-DeepSpeed ALCF/README.md (indented as in the README).
MEGATRON_DS = (
    "        [2024-03-07 15:27:02,646] [INFO] [timer.py:260:stop] epoch=0/micro_step=199/"
    "global_step=199, RunningAvgSamplesPerSec=58.730622229657506, "
    "CurrSamplesPerSec=61.35304005128382, MemAllocated=6.01GB, MaxMemAllocated=19.52GB",
    "        iteration      199/  317892 | consumed samples:       152832 | consumed tokens:"
    "    625999872 | elapsed time per iteration (ms): 14287.5 | learning rate: 2.407E-04 | "
    "global batch size:   768 | lm loss: 5.905366E+00 | loss scale: 8192.0 | actual seqlen:  "
    "4096 | number of skipped iterations:   0 | number of nan iterations:   0 | samples per "
    "second: 53.753 | tokens per gpu per second (tgs): 1146.733 | TFLOPs: 69.85 |",
    "        [2024-03-07 15:27:15,063] [INFO] [logging.py:96:log_dist] [Rank 0] step=200, "
    "skipped=4, lr=[0.000240653265864008, 0.000240653265864008], mom=[(0.9, 0.999), "
    "(0.9, 0.999)]",
    "        iteration      200/  317892 | consumed samples:       153600 | consumed tokens:"
    "    629145600 | elapsed time per iteration (ms): 14541.4 | learning rate: 2.407E-04 | "
    "global batch size:   768 | lm loss: 5.897035E+00 | loss scale: 8192.0 | actual seqlen:  "
    "4096 | number of skipped iterations:   0 | number of nan iterations:   0 | samples per "
    "second: 52.815 | tokens per gpu per second (tgs): 1126.713 | TFLOPs: 68.63 |",
)


def test_deepspeed_09_wall_clock_lines() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", DS_09)
    timers = [m for m in metrics(records) if m.HasField("forward_s")]
    assert [m.step for m in timers] == [1, 2]  # no step line before them: counted
    assert (timers[0].forward_s, timers[0].backward_s) == pytest.approx((0.02741, 0.07344))
    assert (timers[0].allreduce_s, timers[0].optimizer_step_s) == pytest.approx((0.0224, 0.07282))
    assert timers[0].step_time_s == pytest.approx((27.41 + 73.44 + 72.82) / 1000)
    bar = [m for m in metrics(records) if m.step == 12]
    assert bar and bar[0].step_time_s == 1.23 and bar[0].total_steps == 345


def test_deepspeed_timer_line_before_any_step_line_and_neox_iterations() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", DS_NEOX)
    assert metrics(records)[0].samples_per_s == pytest.approx(8.00912418308922)
    step34 = merged(records, 34)
    assert step34.samples_per_s == 7.799  # the later line wins (GPT-NeoX's samples/sec)
    assert step34.memory_bytes == int(59.65 * GIB)
    # DeepSpeed's timer line after the throughput line is step 34's; GPT-NeoX's Megatron-style
    # timers after its iteration line are step 34's too, and come last.
    ds_timers = next(m for m in metrics(records) if m.HasField("forward_s"))
    assert ds_timers.step == 34 and ds_timers.forward_s == pytest.approx(0.65241)
    assert (step34.forward_s, step34.backward_s) == pytest.approx((0.65986, 2.16469))
    # NeoX's "backward-allreduce: 0.00" is a timer it resets under DeepSpeed (the engine reduces
    # inside its backward): DeepSpeed's 162.60 ms stands.
    assert step34.allreduce_s == pytest.approx(0.1626)
    assert step34.optimizer_step_s == pytest.approx(1.17251)
    assert step34.peak_memory_bytes == int(63.31 * GIB)  # MaxMemAllocated
    assert step34.loss == pytest.approx(11.18665) and step34.tflops == pytest.approx(112.9)
    assert step34.step_time_s == pytest.approx(4.1031)  # the iteration line came after timers
    assert step34.learning_rate == pytest.approx(2.111e-06) and step34.total_steps == 10000
    assert merged(records, 35).learning_rate == pytest.approx(2.1731931451279077e-06)
    assert [m.step for m in metrics(records)] == [34, 34, 34, 34, 35]


def test_deepspeed_old_throughput_forms() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", DS_07 + DS_05 + DS_02)
    got = metrics(records)
    assert got[0].samples_per_s == pytest.approx(159.628891629629)
    assert got[0].memory_bytes == int(1.75 * GIB)
    assert (got[1].step, got[1].learning_rate) == (40, 5e-05)
    assert got[2].step == 40 and got[2].samples_per_s == pytest.approx(83.48609168106144)
    assert got[2].memory_bytes == int(0.26 * GIB)
    assert got[3].samples_per_s == pytest.approx(7.458824487454903)  # 2020's logger prefix
    assert got[3].time.ToNanoseconds() > 0
    assert len(got) == 4  # the micro-step timer line is not a step


def test_deepspeed_019_lines_still_parse() -> None:
    from tests.test_tailer import DEEPSPEED_STDOUT  # captured from DeepSpeed 0.19.8

    parser = ScriptLogParser()
    records = feed(parser, "stdout", DEEPSPEED_STDOUT)
    assert [m.step for m in metrics(records)] == [1, 2, 2, 3, 4, 4, 4, 5]  # not init's 0
    assert phases(records) == [P.RANK_PHASE_TRAINING]


def test_deepspeed_pipeline_engine_lines() -> None:
    # deepspeed/runtime/pipe/engine.py train_batch: f"steps: {global_steps} loss: {..:0.4f} "
    # [other losses] f"iter time (s): {..:0.3f} samples/sec: {..:0.3f}". This one is a real
    # MoE run's, quoted in a public test script found by exact-string search in the code index
    # (its repository was not named by the index).
    line = (
        "steps: 200 loss: 5.5508 lm loss: 5.5103 moe loss: 0.0405 iter time (s): 0.936 "
        "samples/sec: 136.706"
    )
    got = metrics(feed(ScriptLogParser(), "stdout", [line]))
    assert [(m.step, m.loss, m.step_time_s, m.samples_per_s) for m in got] == [
        (200, 5.5508, 0.936, 136.706)
    ]


# --- Megatron -------------------------------------------------------------------------------

# Megatron-LM core_r0.6 era, with the time stamp: https://github.com/NVIDIA/Megatron-LM/issues/756
MEGATRON_LM = (
    " [2024-04-06 03:02:12] iteration       71/     100 | consumed samples:         9088 | "
    "elapsed time per iteration (ms): 5361.6 | throughput per GPU (TFLOP/s/GPU): 243.6 | "
    "learning rate: 1.420000E-05 | global batch size:   128 | lm loss: 1.818812E+00 | "
    "load_balancing_loss: 1.013377E+00 | loss scale: 1.0 | grad norm: 1.300 | num zeros: 0.0 | "
    "number of skipped iterations:   0 | number of nan iterations:   0 |",
)
# Megatron-LM 2023 fork without a time stamp: https://github.com/epfLLM/Megatron-LLM/issues/11
MEGATRON_OLD = (
    " iteration      122/  250000 | consumed samples:       124928 | elapsed time per "
    "iteration (ms): 86545.2 | learning rate: 9.150E-06 | global batch size:  1024 | lm loss: "
    "2.504220E+00 | loss scale: 1.0 | grad norm: 0.231 | number of skipped iterations:   0 | "
    "number of nan iterations:   0 |",
)
# nanotron: https://github.com/huggingface/nanotron/pull/23
NANOTRON = (
    "01/17/2024 13:47:27 [INFO|DP=0|PP=0|TP=0|ip-26-0-160-225]: iteration: 991 / 1000 | "
    "consumed_tokens: 634K | elapsed_time_per_iteration_ms: 45 | tokens_per_sec: 14.2K | "
    "tokens_per_sec_per_gpu: 1.78K | global_batch_size: 20 | lm_loss: 10.6 | lr: 1e-05 | "
    "model_tflops_per_gpu: 0.00869 | hardware_tflops_per_gpu: 0.00869 | grad_norm: 0.515 | "
    "cuda_memory_allocated: 75.2M | cuda_max_memory_reserved: 547M | hd_total_memory_tb: 312G "
    "| hd_used_memory_tb: 61.8G | hd_free_memory_tb: 250G",
)


def test_megatron_lm_iteration_lines() -> None:
    records = feed(ScriptLogParser(), "stdout", MEGATRON_LM + MEGATRON_OLD)
    new, old = metrics(records)
    assert (new.step, new.total_steps) == (71, 100)
    assert new.step_time_s == pytest.approx(5.3616)
    assert (new.tflops, new.learning_rate, new.loss) == (243.6, 1.42e-05, 1.818812)
    assert (new.loss_scale, new.grad_norm) == (1.0, 1.3)
    assert records[1].time is not None  # " [2024-04-06 03:02:12]"
    assert (old.step, old.total_steps, old.loss, old.grad_norm) == (122, 250000, 2.50422, 0.231)
    assert old.step_time_s == pytest.approx(86.5452)
    assert phases(records) == [P.RANK_PHASE_TRAINING]


def test_megatron_deepspeed_lines_with_deepspeed_lines() -> None:
    records = feed(ScriptLogParser(), "stdout", MEGATRON_DS)
    step199 = merged(records, 199)
    assert (step199.tflops, step199.tokens_per_s, step199.samples_per_s) == (
        69.85,
        1146.733,
        53.753,
    )
    assert step199.memory_bytes == int(6.01 * GIB)  # from DeepSpeed's timer line
    assert (step199.loss, step199.loss_scale, step199.total_steps) == (5.905366, 8192.0, 317892)
    step200 = merged(records, 200)
    assert step200.learning_rate == pytest.approx(2.407e-04) and step200.loss == 5.897035


def test_nanotron_iteration_line() -> None:
    m = megatron_metrics(NANOTRON[0])
    assert m is not None
    assert (m.step, m.total_steps, m.loss, m.learning_rate, m.grad_norm) == (
        991,
        1000,
        10.6,
        1e-05,
        0.515,
    )
    assert (m.tokens_per_s, m.tflops, m.step_time_s) == (1780.0, 0.00869, 0.045)


def test_not_an_iteration_line() -> None:
    assert megatron_metrics("iteration 5 of the loop | done") is None
    assert megatron_metrics("saving checkpoint at iteration     200 to checkpoints/x") is None


# --- start-up phases ------------------------------------------------------------------------

STARTUP = (
    # DeepSpeed 0.9.x under the accelerate launcher:
    # https://github.com/huggingface/accelerate/issues/1606
    "stdout: g0003: [2023-06-18 23:37:18,773] [INFO] [real_accelerator.py:110:get_accelerator]"
    " Setting ds_accelerator to cuda (auto detect)",
    # torch.utils.cpp_extension (verbose), as pytorch/tutorials advanced_source/cpp_extension.rst
    # shows it; torch 2.13 logs the same texts (cpp_extension.py).
    "Using /tmp/torch_extensions as PyTorch extensions root...",
    "Emitting ninja build file /tmp/torch_extensions/lltm/build.ninja...",
    "Building extension module lltm...",
    "Loading extension module lltm...",
    # DeepSpeed 0.19.8's shm op, from the real run's stdout above (/tmp/hf/r0.out)
    "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
    # https://github.com/huggingface/accelerate/issues/1606
    "stdout: g0003: [2023-06-18 23:37:19,177] [INFO] [comm.py:594:init_distributed] cdb=None",
    # DeepSpeed 0.9 torch checkpoint engine: https://github.com/EleutherAI/gpt-neox/pull/836
    "[2023-04-13 17:49:52,904] [INFO] [torch_checkpoint_engine.py:23:load] [Torch] Loading "
    "checkpoint from /mnt/329710/resources/gpt_neox_2.0_ckpt/checkpoints-neox2.0-1.3b-4096-"
    "32GPUs/global_step25000/mp_rank_00_model_states.pt...",
    # transformers TF trainer's banner, same text in Trainer (trainer.py `logger.info`):
    # https://github.com/huggingface/transformers/pull/4946
    "06/12/2020 10:05:38 - INFO - transformers.trainer_tf -   ***** Running training *****",
    # back to an earlier phase's text: ignored, phases only move forward
    "Loading extension module utils...",
    "\r  5%|▌         | 1/20 [00:00<00:06,  2.81it/s]",
)


def test_startup_phases_move_forward_only() -> None:
    records = feed(ScriptLogParser(), "stdout", STARTUP)
    assert phases(records) == [
        P.RANK_PHASE_IMPORTING,
        P.RANK_PHASE_BUILDING_OPS,
        P.RANK_PHASE_JOINING,
        P.RANK_PHASE_LOADING_CHECKPOINT,
        P.RANK_PHASE_FIRST_STEP,
        P.RANK_PHASE_TRAINING,
    ]
    first = next(r for r in records if r.kind is RecordKind.PHASE)
    assert first.time is not None and first.source == "stdout"


def test_deepspeed_019_and_megatron_startup_texts() -> None:
    # DeepSpeed 0.19.8 (.venv): comm/comm.py init_distributed, torch_checkpoint_engine.py load.
    parser = ScriptLogParser()
    records = feed(
        parser,
        "stdout",
        [
            # the first line of the evaluation run's stdout above (DeepSpeed 0.19.8 on CPU)
            "[2026-12-05 23:10:22,406] [WARNING] [real_accelerator.py:213:get_accelerator] "
            "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable "
            "to detect it.",
            "[2026-11-28 09:46:20,001] [INFO] [comm.py:908:init_distributed] Initializing "
            "TorchBackend in DeepSpeed with backend gloo",
            "[2026-11-28 09:46:21,001] [INFO] [logging.py:123:log_dist] [Rank 0] [Torch] Begin "
            "Load checkpoint from /ckpt/global_step10/mp_rank_00_model_states.pt...",
        ],
    )
    assert phases(records) == [
        P.RANK_PHASE_IMPORTING,
        P.RANK_PHASE_JOINING,
        P.RANK_PHASE_LOADING_CHECKPOINT,
    ]
    # Megatron-DeepSpeed megatron/initialize.py, checkpointing.py, training.py print_datetime
    parser = ScriptLogParser(["--train-iters", "2000"])
    records = feed(
        parser,
        "stdout",
        [
            "> initializing torch distributed ...",
            " loading checkpoint from /ckpt at iteration 1000",
            "[before the start of training step] datetime: 2024-03-07 15:20:00 ",
        ],
    )
    assert phases(records) == [
        P.RANK_PHASE_JOINING,
        P.RANK_PHASE_LOADING_CHECKPOINT,
        P.RANK_PHASE_FIRST_STEP,
    ]
    assert parser.total == 2000


# --- the matcher alone, and bounds ----------------------------------------------------------


def test_matcher_bounded_and_owed_redraws_skipped() -> None:
    matcher = StepMatcher()
    for n in range(5000):  # redraws with no dicts ever (stdout not captured)
        matcher.bar("stderr", n, after_clear=True)
    assert len(matcher._queue) <= 1024
    fresh = StepMatcher()
    placed = fresh.add(_dict("stdout"))
    assert placed == [] and fresh.expire(10.0)[0][1] == 1  # no bar: counted
    assert fresh.bar("stderr", 7, after_clear=True) == []  # its late redraw: skipped
    assert fresh.add(_dict("stdout")) == []
    assert [s for _, s in fresh.bar("stderr", 9, after_clear=True)] == [9]


def _dict(stream: str) -> LogDict:
    return LogDict.of({"loss": 1.0}, stream, 0.0)


def test_long_garbage_is_fast() -> None:
    parser = ScriptLogParser()
    for junk in ("1%|" * 40000, "{'" * 40000, "iteration 1/ 2 |" * 8000, "9" * 100000):
        parser.feed("stdout", junk, 0.0)
        parser.feed("stderr", "SamplesPerSec=" + junk + "step=" + junk, 0.0)


def test_numbers_too_large_for_the_contract_are_dropped() -> None:
    # Constructed garbage: a step past int64 would make protobuf raise.
    big = "99999999999999999999999"
    parser = ScriptLogParser(["--max_steps", "1e30", "--logging_steps", "1e300"])
    lines = [
        f"iteration {big}/ 5 |",
        f"[Rank 0] step={big}, skipped=0, lr=[1]",
        "epoch=0/micro_step=1/global_step=1, RunningAvgSamplesPerSec=1, CurrSamplesPerSec=1, "
        "MemAllocated=1.2.3GB",
        f" 5%|x| {big}/{big} [00:00<00:00, 1it/s]",
        f"steps: {big} loss: 1 iter time (s): 1.2.3 samples/sec: 1",
        f"Continuing training from global step {big}",
        "{'loss': 1.0, 'epoch': 1, 'step': 1e30}",
    ]
    records = feed(parser, "stdout", lines) + parser.flush(100.0)
    assert all(0 < m.step <= 10**15 for m in metrics(records))
    throughput = [m for m in metrics(records) if m.HasField("samples_per_s")]
    assert throughput and not throughput[0].HasField("memory_bytes")


_FRAGMENTS = st.sampled_from(
    [
        "\r",
        "\n",
        "\x1b[A",
        " " * 20,
        "%|",
        "| 3/20 [00:01<00:02, 2.5it/s]",
        "{'loss': ",
        "'nan'",
        "}",
        "iteration 5/ 10 |",
        " lm loss: 1.0E+00 |",
        "[Rank 0] step=",
        ", skipped=0, lr=[",
        "epoch=0/micro_step=1/global_step=1, RunningAvgSamplesPerSec=",
        "time (ms) | fwd: 1.0 | step: ",
        "Continuing training from global step ",
        "***** Running training *****",
        "Total optimization steps = ",
        "steps: 1 loss: x iter time (s): 1 samples/sec: 2",
        "99999999999999999999999",
        "1.2.3",
        "MemAllocated=",
        "GB",
        "0/",
        ", SamplesPerSec=",
        "Comm. Op  Total Latency(ms)",
        "all_reduce | [Caller Func: f]",
        "   8.0 B   40   100.00   0.58   0.00   0.00",
        "(min, max) time across ranks (ms):",
        "    forward-compute ....: (1.0, 2.0)",
        "time (ms) | forward-compute: 1.0 | optimizer: ",
        "  train_batch_size ............. 8",
        "time (ms) | batch_input: 1.0 | fwd_microstep: 1",
        "iteration= 3/ 9 | lm loss=",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["stdout", "stderr"]),
            st.lists(st.one_of(_FRAGMENTS, st.text(max_size=30)), max_size=12).map("".join),
            st.floats(min_value=0, max_value=100, allow_nan=False),
        ),
        max_size=20,
    ),
    st.lists(st.text(max_size=20), max_size=6),
)
def test_garbage_never_raises(lines: list[tuple[str, str, float]], argv: list[str]) -> None:
    parser = ScriptLogParser(argv)
    for stream, line, now in lines:
        for record in parser.feed(stream, line, now):
            assert record.kind in (RecordKind.METRICS, RecordKind.PHASE)
    parser.flush(1000.0)
