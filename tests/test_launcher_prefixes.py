"""Lines as launchers deliver them: every line behind a prefix that torchrun's ``--tee`` /
``--log-line-prefix-template``, Slurm's ``srun -l``, pdsh and DeepSpeed's multi-node runner,
Ray, ``kubectl logs --prefix`` or a timestamping collector (``ts``, journald) put before it.
A line under any of them gives the same findings and figures as the bare line; a number and a
colon that only start a line of ordinary output are not taken for a prefix."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from agent.jobs.metrics_records import merge_metrics
from agent.jobs.node.failure_cause import failure_cause
from agent.jobs.node.log_findings import launcher_prefix, strip_prefix
from agent.jobs.node.log_scan import LogScanner
from agent.jobs.node.script_logs import ScriptLogParser

PREFIXES = [
    "[default0]:",  # torchrun --tee 3
    "[default7]:[rank7]:",  # torchrun --tee 3 around torch's own rank prefix
    "[rank3]:",  # torch 2.2+
    "[0434:0]:",  # torchrun --role "$(hostname -s | tr -dc 0-9):" --tee 3 (nanotron on Slurm)
    "0: ",  # srun -l
    "12: ",  # srun -l, a larger job
    " 3: ",  # srun -l pads the task number to the width of the largest
    "0: [rank0]:",  # srun -l around torch's rank prefix
    "node-17: ",  # pdsh / pssh / clush
    "gpu-a100-3: ",
    "gpu004: ",
    "10.0.0.5: ",  # DeepSpeed's multi-node (pdsh) runner
    "worker-1: ",
    "10.0.0.5: [default0]:",  # DeepSpeed's runner around torchrun --tee
    "(RayWorkerWrapper pid=335) ",  # Ray's worker prefix
    "(pid=1234, ip=10.0.0.1) ",
    "[pod/trainer-worker-0/pytorch] ",  # kubectl logs --prefix
    "2024-05-02T10:11:12.123Z ",  # ts / a collector's RFC 3339 time stamp
    "2024-05-02T10:11:12.123456789Z ",  # kubectl logs --timestamps
    "2024-05-02T10:11:12.123Z [pod/trainer-worker-0/pytorch] ",
    "May 02 10:11:12 node-17 python[4242]: ",  # journald (journalctl -o short)
]


def scanned(lines: list[str]) -> LogScanner:
    """A scanner fed ``lines`` on stderr, then flushed (shared with other scanner tests)."""
    scanner = LogScanner()
    for i, line in enumerate(lines):
        scanner.feed("stderr", line, i * 0.01)
    scanner.flush()
    return scanner


def _findings(lines: list[str]) -> dict[str, tuple[str, dict[str, str]]]:
    scanner = scanned(lines)
    return {alert: (d.cause, d.fields) for alert, d in scanner.found.items()}


OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total"
    " capacity of 79.15 GiB of which 1.20 GiB is free. Including non-PyTorch memory, this process"
    " has 77.94 GiB memory in use."
)
WATCHDOG = [
    "[E321 02:07:08.408271257 ProcessGroupNCCL.cpp:607] [Rank 3] Watchdog caught collective"
    " operation timeout: WorkNCCL(SeqNum=1580, OpType=ALLREDUCE, NumelIn=466119168,"
    " NumelOut=466119168, Timeout(ms)=600000) ran for 600060 milliseconds before timing out.",
    "[E321 02:07:08.465150152 ProcessGroupNCCL.cpp:1664] [PG 1 Rank 3] Exception (either an error"
    " or timeout) detected by watchdog at work: 1580, last enqueued NCCL work: 1582, last"
    " completed NCCL work: 1579.",
]
NCCL_ERROR = [
    "torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/"
    "ProcessGroupNCCL.cpp:1333, remote process exited or there was a network error, NCCL"
    " version 2.18.6",
    "ncclRemoteError: A call failed possibly due to a network error or a remote process exiting"
    " prematurely.",
    "Last error:",
    "NET/IB : Got completion from peer 10.226.98.98<48598> with error 12, opcode 0, len 0,"
    " vendor err 129",
]
TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/work/train.py", line 502, in <module>',
    "    loss.backward()",
    '  File "/usr/lib/python3.10/site-packages/torch/_tensor.py", line 521, in backward',
    "    torch.autograd.backward(",
    "ValueError: Expected input batch_size (12) to match target batch_size (24).",
]
CHILD_FAILED = [
    "Traceback (most recent call last):",
    '  File "/usr/bin/torchrun", line 8, in <module>',
    "    sys.exit(main())",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    "============================================================",
    "train.py FAILED",
    "------------------------------------------------------------",
    "Failures:",
    "  <NO_OTHER_FAILURES>",
    "------------------------------------------------------------",
    "Root Cause (first observed failure):",
    "[0]:",
    "  time      : 2024-07-26_10:59:45",
    "  host      : SH-IDC1-10-140-24-95",
    "  rank      : 10 (local_rank: 2)",
    "  exitcode  : -6 (pid: 214033)",
    "  error_file: <N/A>",
    "  traceback : Signal 6 (SIGABRT) received by PID 214033",
    "============================================================",
]
XID = ["NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, GPU has fallen off the bus."]
OVERFLOW = [
    f"[2024-05-02 10:11:{10 + i},123] [INFO] [loss_scaler.py:183:update_scale] [deepspeed]"
    f" OVERFLOW! Rank 0 Skipping step. Attempted loss scale: {2 ** (16 - i)}, reducing to"
    f" {2 ** (15 - i)}"
    for i in range(5)
]

FAILURES = {
    "cuda_oom": [OOM],
    "watchdog": WATCHDOG,
    "nccl_error_last_error": NCCL_ERROR,
    "traceback": TRACEBACK,
    "child_failed": CHILD_FAILED,
    "xid": XID,
    "overflow_storm": OVERFLOW,
}


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_failure_under_a_launcher_prefix_reads_as_the_bare_one(prefix: str, case: str) -> None:
    bare = FAILURES[case]
    want = _findings(bare)
    assert want, case
    got = _findings([prefix + line for line in bare])
    assert got == want


@pytest.mark.parametrize("prefix", PREFIXES)
def test_the_cause_read_from_the_last_lines_is_the_bare_ones(prefix: str) -> None:
    lines = ["terminate called after throwing an instance of 'std::runtime_error'"]
    lines.append("  what():  [Rank 0] boom")
    assert failure_cause([prefix + line for line in lines]) == failure_cause(lines)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_strip_prefix_takes_the_launchers_prefix_off(prefix: str) -> None:
    assert strip_prefix(prefix + "RuntimeError: boom") == "RuntimeError: boom"
    assert launcher_prefix(prefix + "RuntimeError: boom") == prefix


def _figures(lines: list[tuple[str, str]]) -> list[dict[str, Any]]:
    parser, now, latest = ScriptLogParser(), 0.0, None
    records = []
    for stream, line in lines:
        now += 0.05
        records += parser.feed(stream, line, now)
    records += parser.flush(now + 10.0)
    out = []
    for record in records:
        if record.metrics is not None:
            latest = merge_metrics(latest, record.metrics)
            out.append(MessageToDict(latest, preserving_proto_field_name=True))
    return out


TRAINER = [
    ("stderr", " 10%|█         | 10/100 [00:29<04:22,  2.92s/it]"),
    ("stdout", "{'loss': 3.5534, 'grad_norm': 1.41, 'learning_rate': 2.04e-06, 'epoch': 0.01}"),
    ("stderr", " 11%|█         | 11/100 [00:31<04:19,  2.91s/it]"),
]
MEGATRON = [
    (
        "stdout",
        " iteration      122/  250000 | consumed samples:       124928 | elapsed time per"
        " iteration (ms): 86545.2 | learning rate: 9.150E-06 | global batch size:  1024 | lm"
        " loss: 2.504220E+00 | loss scale: 1.0 | grad norm: 0.231 | number of skipped"
        " iterations:   0 | number of nan iterations:   0 |",
    )
]
DEEPSPEED = [
    (
        "stdout",
        "[2022-03-29 10:11:12,123] [INFO] [logging.py:69:log_dist] [Rank 0] step=40, skipped=2,"
        " lr=[5e-05], mom=[[0.9, 0.999]]",
    )
]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("output", [TRAINER, MEGATRON, DEEPSPEED], ids=["hf", "megatron", "ds"])
def test_trainer_output_under_a_launcher_prefix_gives_the_same_figures(
    prefix: str, output: list[tuple[str, str]]
) -> None:
    want = _figures(output)
    assert want
    assert _figures([(stream, prefix + line) for stream, line in output]) == want


# --- not prefixes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "RuntimeError: boom",
        "ValueError: 12: bad value",
        "Error: ShardCannotStart",
        "INFO: 12 steps done",
        "WARNING: node-17 is slow",
        "cuda:0: 1.2 GiB",
        "Epoch 3: 100%|██████████| 10/10",
        "[E321 02:07:08.408271257 ProcessGroupNCCL.cpp:607] [Rank 3] Watchdog caught",
        '  File "/work/train.py", line 12, in <module>',
        "step 12: loss 3.2",
        "Epoch 3: 100%|██████████| 10/10",
        "fp16: True",
    ],
)
def test_ordinary_output_is_not_taken_for_a_prefix(line: str) -> None:
    assert launcher_prefix(line) == ""
    assert strip_prefix(line) == line


@pytest.mark.parametrize("line", ["12: loss 3.2", "100: 0.5", " 3: done"])
def test_a_number_and_a_colon_are_srun_s_label_only_where_asked(line: str) -> None:
    """Alone, "12: " is how srun -l labels a line and how a script may print one: readers
    that keep a stream's state ask for it only where the stream has it."""
    assert launcher_prefix(line, numbered=False) == ""
    assert strip_prefix(line, numbered=False) == line
    assert launcher_prefix("12: [rank12]:x", numbered=False) == ""


def test_an_exception_line_whose_message_starts_with_a_number_keeps_it() -> None:
    lines = [*TRACEBACK[:-1], "KeyError: 12"]
    (found,) = scanned(lines).found.values()
    assert found.cause == "KeyError: 12"
    lines = ["0: " + line for line in lines]
    (found,) = scanned(lines).found.values()
    assert found.cause == "KeyError: 12"


def test_a_numbered_line_of_output_is_read_as_printed() -> None:
    """A script printing "12: loss 3.2" (not srun's label) changes nothing read before it."""
    lines = [*NCCL_ERROR[:3], "12: socket closed by peer 10.1.2.3"]
    found = scanned(lines).found["nccl_remote_exited"]
    assert found.fields["last_error"] == "12: socket closed by peer 10.1.2.3"
