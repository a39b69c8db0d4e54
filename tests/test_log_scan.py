"""The live scanner's mechanics: findings as lines arrive, follow-up lines, tracebacks under
any prefix, storms, limits, and the cause it keeps. The real excerpts are those of
tests/test_failure_cause.py (sources beside them) and tests/fixtures/logs/ (SOURCES.md)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.jobs.node.log_scan import MAX_PER_ALERT, LogScanner
from agent.jobs.node.log_signatures import ALERTS
from tests.test_failure_cause import (
    NCCL_CUDA_ERROR,
    OOM_2X,
    WATCHDOG_1X,
    WATCHDOG_2X,
    ZERO_WORLD_SIZE,
)


def scan(text: str, stream: str = "stderr") -> tuple[LogScanner, list[str]]:
    scanner = LogScanner()
    found = scanner.feed_lines(stream, text.splitlines(), 1.0)
    return scanner, [f"{d.alert}: {d.cause}" for d in found]


def test_a_watchdog_timeout_waits_for_its_work_counters() -> None:
    scanner = LogScanner()
    first, second = WATCHDOG_2X.splitlines()
    assert scanner.feed("stderr", first, 1.0) == []  # the next line may complete it
    (found,) = scanner.feed("stderr", second, 1.0)
    assert found.alert == "nccl_watchdog_timeout" and found.severity == "critical"
    assert found.cause == (
        "NCCL watchdog timeout: ALLREDUCE (SeqNum 1580) ran 600060 ms, timeout 600000 ms; "
        "last enqueued 1582, last completed 1579"
    )
    details = found.details()
    assert details["op"] == "ALLREDUCE" and details["seq"] == "1580"
    assert details["last_completed"] == "1579" and details["timeout_ms"] == "600000"
    assert details["stream"] == "stderr" and "Watchdog caught" in details["line"]


def test_a_watchdog_timeout_without_counters_is_told_at_the_end_of_the_read() -> None:
    scanner = LogScanner()
    assert scanner.feed("stderr", WATCHDOG_1X.strip(), 1.0) == []
    (found,) = scanner.flush()
    assert found.cause.startswith("NCCL watchdog timeout: ALLREDUCE (SeqNum 469508)")
    # The same timeout told again (the abort's what(), the Python exception) is one finding.
    assert scanner.feed_lines("stderr", [WATCHDOG_1X.strip()] * 3, 2.0) == []


def test_an_oom_far_above_the_end_is_still_the_cause() -> None:
    noise = "\n".join(f"[INFO] cleanup line {i}" for i in range(25))
    scanner, found = scan(OOM_2X + noise)
    assert found == [
        "cuda_oom: CUDA out of memory on GPU 2: tried 1.97 GiB, 982.31 MiB free of 39.43 GiB"
    ]
    cause = scanner.cause()
    assert cause is not None and cause.alert == "cuda_oom"


def test_nccl_cuda_failure_out_of_memory_is_the_gpus() -> None:
    oom = NCCL_CUDA_ERROR.replace(
        "Cuda failure 1 'invalid argument'", "Cuda failure 2 'out of memory'"
    )
    assert scan(oom)[1] == [
        "nccl_cuda_oom: CUDA out of memory in NCCL (Cuda failure 2 'out of memory')"
    ]
    assert scan(NCCL_CUDA_ERROR)[1] == [
        "nccl_cuda_error: NCCL: unhandled CUDA error: Cuda failure 1 'invalid argument'"
    ]


def test_a_traceback_under_a_rank_prefix_gives_its_exception() -> None:
    scanner, found = scan(ZERO_WORLD_SIZE)
    assert len(found) == 1 and found[0].startswith("traceback: ZeRORuntimeException: ")
    # Lines fed one at a time give the same, on the exception's line.
    scanner = LogScanner()
    lines = ZERO_WORLD_SIZE.splitlines()
    assert all(scanner.feed("stderr", line, 1.0) == [] for line in lines[:-1])
    assert [d.alert for d in scanner.feed("stderr", lines[-1], 1.0)] == ["traceback"]


def test_a_loggers_line_is_not_an_exception() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "a.py", line 1\n'
        "INFO: retrying\n"
        "KeyError: 'x'\n"
    )
    assert scan(text)[1] == ["traceback: KeyError: 'x'"]


def test_an_fp16_overflow_storm_is_one_finding_and_its_scale() -> None:
    # DeepSpeed's line (deepspeedai/DeepSpeed#931: fixtures/logs/loss_scale_hysteresis_ds931.log).
    line = "[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: {a}, reducing to {b}"
    scanner = LogScanner()
    found = []
    for i in range(30):
        scale = 2 ** (16 - i)
        found += scanner.feed("stdout", line.format(a=scale, b=scale / 2), float(i))
    assert len(found) == 1 and found[0].alert == "loss_scale_storm"
    assert found[0].fields["overflows"] == "4"
    # A few overflows a minute, as a healthy fp16 run has while its scale settles: nothing.
    calm = LogScanner()
    assert not any(calm.feed("stdout", line.format(a=8, b=4), float(i * 30)) for i in range(30))


def test_findings_are_rate_limited_per_alert() -> None:
    scanner = LogScanner()
    lines = [f"Traceback (most recent call last):\nValueError: case {i}" for i in range(20)]
    found = scanner.feed_lines("stderr", "\n".join(lines).splitlines(), 5.0)
    assert len(found) == MAX_PER_ALERT and scanner.suppressed == 20 - MAX_PER_ALERT
    later = scanner.feed_lines("stderr", [*lines[0].splitlines(), "ValueError: new"], 100.0)
    assert [d.cause for d in later] == []  # case 0 was told already; "new" has no traceback
    cause = scanner.cause()
    assert cause is not None and cause.cause == "ValueError: case 19"  # the latest traceback


def test_the_cause_prefers_the_root_over_what_follows() -> None:
    gloo = (
        "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:598] "
        "Connection closed by peer [10.0.0.2]:35679"
    )
    scanner, found = scan(OOM_2X + gloo + "\n")
    assert [f.split(":")[0] for f in found] == ["cuda_oom", "gloo_reset"]
    cause = scanner.cause()
    assert cause is not None and cause.alert == "cuda_oom"


def test_pytorchs_bare_abort_message_is_the_cause_only_when_nothing_says_more() -> None:
    # The takedown lines as PyTorch 2.x prints them (tests/fixtures/logs/, doclayout22), then
    # the timeout they followed, as another rank's log shows it first.
    takedown = (
        "[E ProcessGroupNCCL.cpp:488] Some NCCL operations have failed or timed out. Due to the "
        "asynchronous nature of CUDA kernels, subsequent GPU operations might run on "
        "corrupted/incomplete data.\n"
    )
    scanner, _ = scan(takedown)
    alone = scanner.cause()
    assert alone is not None and "the log does not say which collective" in alone.cause
    timeout = (
        "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, "
        "OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600013 "
        "milliseconds before timing out.\n"
    )
    scanner, _ = scan(takedown + timeout + takedown)
    cause = scanner.cause()
    assert cause is not None and "ALLREDUCE (SeqNum 7)" in cause.cause
    gloo = "RuntimeError: [gloo/transport/tcp/pair.cc:598] Connection closed by peer [1.2.3.4]:5\n"
    scanner, _ = scan(takedown + gloo)
    cause = scanner.cause()
    assert cause is not None and cause.alert == "gloo_reset"  # anything else comes first


def test_a_graver_finding_of_an_alert_replaces_a_milder_one() -> None:
    # Xid 43 (a process stopped: nothing to do), then Xid 79 on another GPU of the node.
    scanner, _ = scan(
        "NVRM: Xid (PCI:0000:00:05): 43, pid=1045242, name=pt_main_thread, Ch 00000008\n"
        "NVRM: Xid (PCI:0000:a1:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off "
        "the bus.\n"
        "NVRM: Xid (PCI:0000:00:06): 43, pid=1045243, name=pt_main_thread, Ch 00000008\n"
    )
    cause = scanner.cause()
    assert cause is not None and cause.fields["xid"] == "79"


def test_a_cuda_error_the_watchdog_catches_is_a_cuda_error_and_memory_stays_oom() -> None:
    scanner, _ = scan(
        "[Rank 3] NCCL watchdog thread terminated with exception: CUDA error: an illegal memory "
        "access was encountered\n"
    )
    cause = scanner.cause()
    assert cause is not None and cause.alert == "nccl_cuda_error"
    assert cause.fields["cuda_error"] == "an illegal memory access was encountered"
    scanner, _ = scan(
        "[Rank 3] NCCL watchdog thread terminated with exception: CUDA error: out of memory\n"
    )
    assert set(scanner.found) == {"cuda_oom"}


FRAME = '  File "/opt/torch/distributed/launcher/api.py", line 264, in launch_agent\n'


def test_torchruns_summary_names_the_rank_that_died_and_how() -> None:
    # torchrun's format (torch/distributed/elastic/multiprocessing/errors/__init__.py) behind
    # srun -l's "0: " prefix, with another failure before the root cause; the worker exited.
    summary = [
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "train.py FAILED",
        "------------------------------------------------------------",
        "Failures:",
        "[1]:",
        "  time      : 2026-12-07_06:50:00",
        "  host      : node-b",
        "  rank      : 3 (local_rank: 1)",
        "  exitcode  : -15 (pid: 4242)",
        "  error_file: <N/A>",
        "  traceback : Signal 15 (SIGTERM) received by PID 4242",
        "------------------------------------------------------------",
        "Root Cause (first observed failure):",
        "[0]:",
        "  time      : 2026-12-07_06:49:58",
        "  host      : node-b",
        "  rank      : 2 (local_rank: 0)",
        "  exitcode  : 1 (pid: 4241)",
        "  error_file: <N/A>",
        "  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html",
        "============================================================",
    ]
    text = "".join(f"0: {line}\n" for line in summary)
    scanner, found = scan("0: " + FRAME + text)
    cause = scanner.cause()
    assert cause is not None and cause.cause == (
        "ChildFailedError: rank 2 (local rank 0) on node-b exited with code 1"
    )
    assert (cause.fields["rank"], cause.fields["exitcode"]) == ("2", "1")
    assert len(found) == 1  # told once, when the summary was read
    cut, found = scan("0: " + FRAME + text.split("Root Cause")[0])
    cause = cut.cause()  # the log ends inside the summary: the fields read so far
    assert cause is not None and "rank 3" in cause.cause and "SIGTERM" in cause.cause


def test_a_headless_traceback_behind_a_wrappers_prefix_ends_at_its_exception() -> None:
    # vLLM's Ray workers put "(RayWorkerWrapper pid=335, ip=10.1.0.67) ERROR ... ] " before
    # every line (NVIDIA/nccl#1591): the prefix has no colon at its end.
    prefix = "(RayWorkerWrapper pid=335) ERROR 01-29 07:44:33 worker_base.py:467] "
    scanner, found = scan(
        f'{prefix}  File "/opt/vllm/worker.py", line 12, in run\n'
        f"{prefix}    raise RuntimeError(msg)\n"
        f"{prefix}torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.\n"
        "after the traceback: NCCL WARN Net : Connection closed by remote peer\n"
    )
    assert [f.split(":")[0] for f in found] == ["cuda_oom"]
    assert set(scanner.found) == {"cuda_oom", "nccl_warn"}  # and the lines after it are read


def test_a_watchdogs_work_line_alone_is_a_timeout_and_after_its_line_no_second_one() -> None:
    work = (
        "[rank1]:[E1107 03:07:20 ProcessGroupNCCL.cpp:1664] [PG 0 (default_pg) Rank 1] Timeout "
        "at NCCL work: 876319, last enqueued NCCL work: 876319, last completed NCCL work: 876318."
    )
    _, found = scan(work + "\n")
    assert found == [
        "nccl_watchdog_timeout: NCCL watchdog timeout at SeqNum 876319 (the collective's own "
        "line is not in the log); last enqueued 876319, last completed 876318"
    ]
    _, found = scan(WATCHDOG_2X.splitlines()[0] + "\n" + work + "\n")
    assert len(found) == 1 and "(SeqNum 1580)" in found[0]  # the work line completed it


def test_ordinary_training_output_finds_nothing() -> None:
    lines = [
        "[2024-05-01 10:00:00,123] [INFO] [logging.py:96:log_dist] [Rank 0] step=10, "
        "skipped=0, lr=[0.0001], mom=[(0.9, 0.999)]",
        "{'loss': 2.3456, 'grad_norm': 1.23, 'learning_rate': 5e-05, 'epoch': 0.01}",
        " iteration      100/  500000 | lm loss: 2.345E+00 | loss scale: 65536.0 |"
        " number of skipped iterations:   0 | number of nan iterations:   0 |",
        "node-a:1234:1250 [0] NCCL INFO Using network IB",
        "Error analysis is disabled; information only",
    ]
    scanner = LogScanner()
    assert scanner.feed_lines("stdout", lines * 50, 1.0) == []
    assert scanner.cause() is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=300), max_size=40))
def test_any_text_never_raises_and_names_known_alerts(lines: list[str]) -> None:
    scanner = LogScanner()
    found = scanner.feed_lines("stderr", lines, 1.0)
    assert all(d.alert in ALERTS and "\n" not in d.cause for d in found)
