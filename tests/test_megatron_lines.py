"""Megatron's iteration lines and the timers after them, from real logs (Megatron-LM 2021 to
today, Megatron-DeepSpeed, ALCF's fork), through the rank's whole script-log parser.

Each fixture line is copied from the source named beside it; only indentation that the source
added (a Markdown code block) was removed.
"""

from __future__ import annotations

import time

import pytest

from agent.jobs.node.megatron_lines import MegatronParser, megatron_metrics, timer_metrics
from agent.jobs.node.script_logs import ScriptLogParser
from tests.script_log_helpers import feed, merged, metrics

# Megatron-LM 2021 (BERT, one-line timers after each iteration line, then the memory report):
# https://github.com/NVIDIA/nccl/issues/743
MEGATRON_2021 = (
    "time (ms) | forward-compute: 58.16 | backward-compute: 42.66 | backward-params-all-reduce: "
    "21.43 | backward-layernorm-all-reduce: 0.02 | backward-embedding-all-reduce: 0.03 | "
    "backward-reduce-model-grads: 21.52 | backward-gather-model-params: 0.00 | "
    "optimizer-copy-to-main-grad: 5.67 | optimizer-unscale-and-check-inf: 3.74 | "
    "optimizer-clip-main-grad: 1.15 | optimizer-count-zeros: 0.00 | optimizer-inner-step: 46.00 "
    "| optimizer-copy-main-to-model-params: 0.83 | optimizer: 57.50 | batch-generator: 5.24",
    "[Rank 0] (after 20 iterations) memory (MB) | allocated: 6245.033203125 | max allocated: "
    "6245.0361328125 | reserved: 6554.0 | max reserved: 6554.0",
    " iteration       30/ 1000000 | consumed samples:          120 | elapsed time per iteration "
    "(ms): 123.4 | learning rate: 1.111E-07 | global batch size:     4 | lm loss: 1.012573E+01 | "
    "sop loss: 6.911852E-01 | loss scale: 16384.0 | number of skipped iterations:   1 | number "
    "of nan iterations:   0 |",
    "time (ms) | forward-compute: 31.57 | backward-compute: 41.76 | backward-params-all-reduce: "
    "21.15 | backward-layernorm-all-reduce: 0.01 | backward-embedding-all-reduce: 0.03 | "
    "backward-reduce-model-grads: 21.24 | backward-gather-model-params: 0.01",
)
# Megatron-DeepSpeed (ALCF fork, DeepSpeed 0.12, logger "key=value" form, then the (min, max)
# block): https://github.com/saforem2/Megatron-DeepSpeed/blob/
# 027032123c2c630da2e755e4381427ab170bdba3/ALCF/README.md
ALCF = (
    "[2024-06-21 10:50:42,167] [INFO] [logging.py:96:log_dist] [Rank 0] step=1, skipped=0, "
    "lr=[1.887433467970254e-08, 1.887433467970254e-08], mom=[(0.9, 0.999), (0.9, 0.999)]",
    "[2024-06-21 10:50:42,167] [INFO] [logging.py:96:log_dist] [Rank 0] time (ms) | "
    "fwd_microstep: 25341.72 | bwd_microstep: 77707.38 | bwd_inner_microstep: 75751.84 | "
    "bwd_allreduce_microstep: 1955.54 | step_microstep: 2218.38",
    "[2024-06-21 10:50:42,168] [INFO] [logging.py:96:log_dist] [Rank 0] time (ms) | fwd: "
    "25341.72 | bwd: 77707.38 | bwd_inner: 75751.84 | bwd_allreduce: 1955.54 | step: 2218.38",
    "[2024-06-21 10:50:42][INFO][training:1609] -  iteration=       1/  317892 | "
    "consumed_samples=         768 | consumed_tokens=     3145728 | "
    "elapsed_time_per_iteration_ms=108893.2 | learning_rate=1.88743e-08 | global_batch_size=  "
    "768 | lm loss=11.133188 | loss_scale=1.0 | actual_seqlen= 4096 | "
    "number_of_skipped_iterations=  0 | number_of_nan_iterations=  0 | "
    "samples_per_second=7.053 | tokens_per_gpu_per_second_tgs=1203.674 | [LM]-TFLOPs=49.66 | "
    "[DS]-TFLOPs=73.32 |",
    "[2024-06-21 10:50:42][INFO][utils:190] - [Rank 0] (after 1 iterations) memory (MB) | "
    "allocated: 18243.64111328125 | max allocated: 50664.2548828125 | reserved: 54556.0 | max "
    "reserved: 54556.0",
    "(min, max) time across ranks (ms):",
    "    forward-backward ...............................: (106622.81, 106624.28)",
    "    optimizer ......................................: (2221.02, 2234.98)",
)
# The same README, the Sunspot run: "tokens per gpu per second(tgs)" without the space.
ALCF_SUNSPOT = (
    " iteration        1/  317892 | consumed samples:           96 | consumed tokens:       "
    "393216 | elapsed time per iteration (ms): 25849.1 | learning rate: 3.000E-04 | global batch"
    " size:    96 | lm loss: 1.117136E+01 | loss scale: 1.0 | actual seqlen:  4096 | number of "
    "skipped iterations:   0 | number of nan iterations:   0 | samples per second: 3.714 | "
    "tokens per gpu per second(tgs): 633.832 | TFLOPs: 38.61 |"
)
# Same README, set-up timers before training: a block that is not an iteration's.
SETUP_BLOCK = (
    "(min, max) time across ranks (ms):",
    "    model-and-optimizer-setup ......................: (64818.18, 64858.22)",
    "    train/valid/test-data-iterators-setup ..........: (1968.10, 2288.56)",
    "training ...",
)
# Megatron-LM today (microsecond time stamp): https://github.com/NVIDIA/Megatron-LM/pull/5662
MEGATRON_2026 = (
    "[2026-07-10 05:46:31.627699] iteration       20/      20 | consumed samples:          320 "
    "| elapsed time per iteration (ms): 744.0 | learning rate: 0.000000E+00 | global batch size:"
    "    16 | lm loss: 1.020935E+00 | loss scale: 1.0 | grad norm: 2.939 | number of skipped "
    "iterations:   0 | number of nan iterations:   0 |"
)


def test_megatron_2021_timers_belong_to_the_iteration_before_them() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", MEGATRON_2021)
    # The first timer line came before any iteration line: no step to give it. The memory
    # report says its own ("after 20 iterations").
    assert [m.step for m in metrics(records)] == [20, 30, 30]
    step20 = merged(records, 20)
    assert step20.memory_bytes == int(6245.033203125 * 2**20)
    assert step20.peak_memory_bytes == int(6245.0361328125 * 2**20)
    step30 = merged(records, 30)
    assert (step30.loss, step30.learning_rate, step30.loss_scale) == (10.12573, 1.111e-07, 16384)
    assert step30.step_time_s == pytest.approx(0.1234)
    assert (step30.forward_s, step30.backward_s) == pytest.approx((0.03157, 0.04176))
    # backward-reduce-model-grads times the other three reductions: taken alone.
    assert step30.allreduce_s == pytest.approx(0.02124)
    assert not step30.HasField("optimizer_step_s")  # not in the (cut) second line


def test_alcf_key_value_line_and_min_max_block() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", ALCF)
    assert records[-1].metrics is not None and records[-1].metrics.step == 1  # the memory report
    records += parser.flush(10.0)  # nothing followed the block: it ends by time
    step1 = merged(records, 1)
    assert (step1.loss, step1.loss_scale, step1.total_steps) == (11.133188, 1.0, 317892)
    assert step1.step_time_s == pytest.approx(108.8932)  # the iteration's, not fwd+bwd+step
    assert (step1.samples_per_s, step1.tokens_per_s, step1.tflops) == (7.053, 1203.674, 49.66)
    assert step1.learning_rate == pytest.approx(1.88743e-08)
    assert step1.forward_s == pytest.approx(25.34172)  # DeepSpeed's split of the same step
    assert step1.optimizer_step_s == pytest.approx(2.23498)  # Megatron's, the slowest rank
    assert step1.peak_memory_bytes == int(50664.2548828125 * 2**20)
    assert records[-1].metrics is not None and records[-1].metrics.step == 1


def test_sunspot_variant_and_setup_block() -> None:
    parser = ScriptLogParser()
    records = feed(parser, "stdout", (*SETUP_BLOCK, ALCF_SUNSPOT, MEGATRON_2026))
    one, twenty = metrics(records)
    assert (one.step, one.tokens_per_s, one.tflops, one.samples_per_s) == (1, 633.832, 38.61, 3.714)
    assert (twenty.step, twenty.grad_norm, twenty.loss) == (20, 2.939, 1.020935)
    assert records[-1].time is not None  # "[2026-07-10 05:46:31.627699]"


def test_timer_block_ends_at_its_streams_next_line_only() -> None:
    # A warning on stderr between the rows does not end stdout's block; prefixes stay.
    parser = ScriptLogParser()
    records = feed(parser, "stdout", ["[default0]:" + MEGATRON_2026, "[default0]:" + ALCF[5]])
    records += parser.feed("stderr", "UserWarning: something", 0.0)
    records += feed(parser, "stdout", ["[default0]:" + line for line in ALCF[6:]])
    assert [m.step for m in metrics(records)] == [20]
    records += parser.feed("stdout", "[default0]: saving checkpoint at iteration 20", 0.0)
    assert metrics(records)[-1].optimizer_step_s == pytest.approx(2.23498)


def test_all_ranks_option_and_one_line_names() -> None:
    # --timing-log-option all, as megatron/core/timers.py _get_all_ranks_time_string writes it.
    parser = MegatronParser()
    assert parser.feed("stdout", MEGATRON_2026, 0.0)[0].step == 20
    for line in ("times across ranks (ms):", "  forward-compute:", "     rank  0: 12.00"):
        assert parser.feed("stdout", line, 0.0) == []
    assert parser.feed("stdout", "     rank  1: 14.00", 0.0) == []
    (m,) = parser.feed("stdout", "done", 0.0)
    assert (m.step, m.forward_s) == (20, 0.014)
    assert timer_metrics(3, {"all-grads-sync": 10.0, "embedding-grads-all-reduce": 2.0}) == (
        timer_metrics(3, {"grads-reduce-scatter": 12.0})
    )
    assert timer_metrics(3, {"batch-generator": 1.0}) is None


def test_not_iteration_lines() -> None:
    assert megatron_metrics(" validation loss at iteration 100 | lm loss value: 2.3 |") is None
    assert megatron_metrics("iteration 1/2 | lm loss: 1.2.3 |") is not None  # loss dropped
    parser = MegatronParser()
    for junk in ("time (ms) | forward: 1.2.3 | step: x", "(min, max) time across ranks (ms):"):
        assert parser.feed("stdout", junk, 0.0) == []
    assert parser.feed("stdout", "    forward ....: (1.2.3, 4)", 0.0) == []
    assert parser.flush(100.0) == []  # no iteration yet: nothing to give the block to


def test_long_rows_cost_linear_time() -> None:
    # Constructed garbage inside an open block: a quadratic regex took ~0.6 s a line here.
    parser = ScriptLogParser()
    parser.feed("stdout", "(min, max) time across ranks (ms):", 0.0)
    started = time.process_time()
    for junk in ("." * 16000 + ".: (1, 2)", "a" * 16000 + " ..: ") * 5:
        parser.feed("stdout", junk, 0.0)
    assert time.process_time() - started < 2.0
