"""Where errors start in real logs (the log screen's `e`), on excerpts from public issue
trackers, each with its source beside it."""

from __future__ import annotations

from console.model.log_buffer import LogBuffer
from console.model.log_errors import (
    ErrorIndex,
    ErrorJumps,
    ErrorStarts,
    LineSeek,
    error_kind,
    error_starts,
)

# https://github.com/hiyouga/LlamaFactory/issues/7396 (PyTorch 2.x, torchrun's [rankN]
# prefix behind a launcher's [pid] one)
WATCHDOG_PT2 = [
    "[80746] [rank0]:[E321 02:07:08.408271257 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog "
    "caught collective operation timeout: WorkNCCL(SeqNum=1580, OpType=ALLREDUCE, "
    "NumelIn=466119168, NumelOut=466119168, Timeout(ms)=600000) ran for 600060 milliseconds "
    "before timing out.",
    "[80748] [rank0]:[E321 02:07:08.465150152 ProcessGroupNCCL.cpp:1664] [PG 1 Rank 0] "
    "Exception (either an error or timeout) detected by watchdog at work: 1580, last enqueued "
    "NCCL work: 1582, last completed NCCL work: 1579.",
]

# https://github.com/OFA-Sys/OFA/issues/271 (PyTorch 1.x: "[E ProcessGroupNCCL.cpp:737]")
WATCHDOG_PT1 = (
    "[E ProcessGroupNCCL.cpp:737] [Rank 1] Watchdog caught collective operation timeout: "
    "WorkNCCL(SeqNum=469508, OpType=ALLREDUCE, Timeout(ms)=1800000) ran for 1802212 "
    "milliseconds before timing out."
)

# https://github.com/huggingface/picotron_tutorial/issues/6: a warning, then the timeout.
PICOTRON = [
    "/usr/local/lib/python3.10/dist-packages/huggingface_hub/file_download.py:896: "
    "FutureWarning: `resume_download` is deprecated and will be removed in version 1.0.0. "
    "Downloads always resume when possible. If you want to force a new download, use "
    "`force_download=True`.",
    "  warnings.warn(",
    "[E ProcessGroupNCCL.cpp:474] [Rank 1] Watchdog caught collective operation timeout: "
    "WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=120000) ran for "
    "120621 milliseconds before timing out.",
    "[E ProcessGroupNCCL.cpp:474] [Rank 7] Watchdog caught collective operation timeout: "
    "WorkNCCL(SeqNum=1, OpType=ALLREDUCE, NumelIn=1, NumelOut=1, Timeout(ms)=120000) ran for "
    "120633 milliseconds before timing out.",
]

# https://github.com/NVIDIA/nccl/issues/1235: a peer goes, then NCCL's own CUDA OOM.
NCCL_1235 = [
    "ng30903:3063025:3066048 [0] misc/socket.cc:49 NCCL WARN socketProgress: Connection "
    "closed by remote peer ng30903-ib.narval.calcul.quebec<51159>",
    "ng30903:3063025:3066048 [0] NCCL INFO misc/socket.cc:749 -> 6",
    "",
    "ng30903:3063025:3066048 [0] proxy.cc:1143 NCCL WARN Socket recv failed while polling for "
    "opId=0x55a51966cc80",
    "ng30903:3063025:3066048 [0] NCCL INFO transport/p2p.cc:438 -> 3",
    "ng30903:3063025:3066048 [0] NCCL INFO transport.cc:33 -> 3",
    "",
    "ng30903:3063028:3066152 [3] include/alloc.h:178 NCCL WARN Cuda failure 'out of memory'",
    "",
    "ng30903:3063028:3066152 [3] include/alloc.h:185 NCCL WARN Failed to CUDA calloc 6291456 bytes",
    "ng30903:3063028:3066152 [3] NCCL INFO transport/p2p.cc:204 -> 1",
]

# https://github.com/bowang-lab/BioReason/issues/10: a chained traceback is one error.
CHAINED = [
    "Traceback (most recent call last):",
    '  File "/root/mambaforge/envs/BioReason/lib/python3.12/site-packages/accelerate/utils/'
    'deepspeed.py", line 148, in __init__',
    "    config = json.loads(config_file_or_dict)",
    "             ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^",
    '  File "/root/mambaforge/envs/BioReason/lib/python3.12/json/decoder.py", line 356, in '
    "raw_decode",
    '    raise JSONDecodeError("Expecting value", s, err.value) from None',
    "json.decoder.JSONDecodeError: Expecting value: line 1 column 1 (char 0)",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "/root/mambaforge/envs/BioReason/lib/python3.12/site-packages/accelerate/utils/'
    'deepspeed.py", line 151, in __init__',
]

# https://github.com/hiyouga/LlamaFactory/issues/573: the traceback's end, DeepSpeed's
# launcher killing the other ranks, then its own ERROR line.
LAUNCHER = [
    '  File "/data/miniconda3/envs/llama_etuning/lib/python3.10/site-packages/accelerate/utils/'
    'deepspeed.py", line 55, in __init__',
    "    raise ValueError(",
    "ValueError: Expected a string path to an existing deepspeed config, or a dictionary, or a "
    "base64 encoded string. Received: deepspeed.json",
    "[2023-08-18 16:11:18,772] [INFO] [launch.py:315:sigkill_handler] Killing subprocess 126956",
    "[2023-08-18 16:11:18,877] [ERROR] [launch.py:321:sigkill_handler] ['/data/miniconda3/envs/"
    "llama_etuning/bin/python', '-u', 'src/train_bash.py', '--local_rank=3'] exits with return "
    "code = 1",
]

# https://github.com/hiyouga/LlamaFactory/issues/7532 (ZeRO-3 under PyTorch 2.x)
CUDA_OOM = (
    "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.39 GiB. GPU 1 has a "
    "total capacity of 79.32 GiB of which 2.40 GiB is free."
)


def test_error_kind_names_real_lines() -> None:
    assert error_kind(WATCHDOG_PT2[0]) == "nccl_timeout"
    assert error_kind(WATCHDOG_PT1) == "nccl_timeout"
    assert error_kind(CUDA_OOM) == "cuda_oom"
    assert error_kind(NCCL_1235[0]) == "nccl_warn"
    assert error_kind(NCCL_1235[7]) == "cuda_oom"  # NCCL WARN Cuda failure 'out of memory'
    assert error_kind(CHAINED[0]) == "traceback"
    assert error_kind(LAUNCHER[2]) == "exception"
    assert error_kind(LAUNCHER[4]) == "error"
    # argparse, as a rank started with a missing --deepspeed_config prints it
    assert error_kind("train.py: error: argument --deepspeed_config: can't open 'x.json'") == (
        "error"
    )
    # pytorch/pytorch#190489: a gloo rank that never destroyed its process group, at exit
    assert error_kind("terminate called without an active exception") == "crash"
    assert error_kind("terminate called after throwing an instance of 'gloo::IoException'") == (
        "crash"
    )
    for line in (*PICOTRON[:2], NCCL_1235[1], LAUNCHER[3], "step=10 loss=2.31 error_rate=0.1"):
        assert error_kind(line) is None, line


def test_a_chained_traceback_is_one_error() -> None:
    assert error_starts(CHAINED) == [(0, "traceback")]


def test_nccl_warnings_start_an_error_each_after_ordinary_lines() -> None:
    # Each WARN follows NCCL INFO lines (ordinary output): three errors; the calloc WARN
    # right after the OOM one (a blank line between) belongs to it.
    assert error_starts(NCCL_1235) == [(0, "nccl_warn"), (3, "nccl_warn"), (7, "cuda_oom")]


def test_a_warning_is_no_error_and_a_run_of_timeouts_is_one() -> None:
    assert error_starts(PICOTRON) == [(2, "nccl_timeout")]
    assert error_starts(WATCHDOG_PT2) == [(0, "nccl_timeout")]


def test_the_end_of_a_cut_traceback_and_the_launcher_error_are_two() -> None:
    assert error_starts(LAUNCHER) == [(2, "exception"), (4, "error")]


def test_interleaved_ranks_are_followed_apart() -> None:
    lines = [
        "[rank0]: Traceback (most recent call last):",
        "[rank1]: Traceback (most recent call last):",
        '[rank0]:   File "/work/train.py", line 88, in <module>',
        '[rank1]:   File "/work/train.py", line 88, in <module>',
        "[rank0]: " + CUDA_OOM,
        "[rank1]: " + CUDA_OOM,
    ]
    assert error_starts(lines) == [(0, "traceback"), (1, "traceback")]


def test_streams_are_followed_apart() -> None:
    starts = ErrorStarts()
    assert starts.feed(CHAINED[0], stream=1) == "traceback"
    assert starts.feed("step=1 loss=2.0", stream=0) is None  # stdout between the frames
    assert starts.feed(CHAINED[1], stream=1) is None
    assert starts.feed(CHAINED[6], stream=1) is None  # its exception line


def test_the_index_follows_a_ring_and_jumps_wrap() -> None:
    buffer = LogBuffer(max_lines=50)
    buffer.extend([f"step={i}" for i in range(10)])
    buffer.extend(PICOTRON)  # error at 12
    buffer.extend([f"step={i}" for i in range(10)])
    buffer.extend(LAUNCHER)  # errors at 26 and 28
    errors = ErrorIndex(buffer)
    assert [errors.first(), errors.last(), len(errors)] == [12, 28, 3]
    assert errors.kind(26) == "exception" and errors.ordinal(28) == 3
    jumps = ErrorJumps()
    assert jumps.step(buffer, None, backwards=False) == 12
    assert jumps.step(buffer, 12, backwards=False) == 26
    assert jumps.step(buffer, 28, backwards=False) == 12  # wraps
    assert jumps.step(buffer, 12, backwards=True) == 28
    assert jumps.step(buffer, 5, backwards=False) == 12  # not on an error: the first
    assert jumps.describe(buffer, 26) == "error 2 of 3: exception"
    buffer.extend([f"step={i}" for i in range(60)])  # 89 lines in all: 0..38 dropped
    assert jumps.step(buffer, None, backwards=False) is None


def test_a_seek_waits_for_its_line_then_falls_back_to_the_last_error() -> None:
    buffer = LogBuffer()
    seek = LineSeek(LAUNCHER[2])
    buffer.extend(PICOTRON)
    assert seek.find(buffer, ErrorIndex(buffer), settled=False) == (False, None)
    buffer.extend(LAUNCHER)
    assert seek.find(buffer, ErrorIndex(buffer), settled=False) == (True, 6)
    missing = LineSeek("a line that never came")
    assert missing.find(buffer, ErrorIndex(buffer), settled=True) == (True, 8)
    assert LineSeek().find(LogBuffer(), ErrorIndex(LogBuffer()), settled=True) == (True, None)
