"""LogBuffer: the ring, severities on real-looking lines, search and LogSearch."""

from __future__ import annotations

import re

import pytest

from console.model.log_buffer import (
    MAX_LINE_CHARS,
    LogBuffer,
    LogSearch,
    Severity,
    classify,
    clean_line,
)

ERROR_LINES = [
    "Traceback (most recent call last):",
    "RuntimeError: CUDA error: an illegal memory access was encountered",
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
    "capacity of 79.15 GiB of which 1.02 GiB is free.",
    "[rank1]: torch.distributed.DistBackendError: NCCL error in: "
    "../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, unhandled system error",
    "node-b:2233:2290 [1] NCCL WARN Call to connect returned Connection refused, retrying",
    "[rank1]:[E1023 12:34:56.789012 1234 ProcessGroupNCCL.cpp:616] [Rank 1] Watchdog caught "
    "collective operation timeout: WorkNCCL(SeqNum=12, OpType=ALLREDUCE) ran for 300000 ms",
    "[E ProcessGroupNCCL.cpp:475] [Rank 1] Watchdog caught collective operation timeout",
    "ERROR:torch.distributed.elastic.multiprocessing.api:failed (exitcode: 1) local_rank: 0 "
    "(pid: 1234) of binary: /usr/bin/python",
    "[2025-03-01 10:00:09,000] [ERROR] [launch.py:321:sigkill_handler] ['/usr/bin/python', "
    "'-u', 'train.py'] exits with return code = 1",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
    "train.py: error: unrecognized arguments: --foo",
    "AssertionError",
    "Exception in thread Thread-1 (worker):",
    "Fatal Python error: Segmentation fault",
]

WARNING_LINES = [
    "[2025-03-01 10:00:03,000] [WARNING] [stage3.py:1850:step] 4 pytorch allocator cache "
    "flushes since last step. this happens when there is high memory pressure",
    "/usr/lib/python3/site-packages/torch/utils/checkpoint.py:91: UserWarning: None of the "
    "inputs have requires_grad=True. Gradients will be None",
    "  warnings.warn(",
    "[W socket.cpp:663] [c10d] The client socket has failed to connect to [localhost]:29500 "
    "(errno: 99 - Cannot assign requested address).",
    "[rank0]:[W1023 12:00:00.123456789 ProcessGroupNCCL.cpp:4115] Warning: barrier() using "
    "device under current context",
    "FutureWarning: `torch.cuda.amp.autocast(args...)` is deprecated.",
]

NORMAL_LINES = [
    "[2025-03-01 10:00:00,001] [INFO] [real_accelerator.py:219:get_accelerator] Setting "
    "ds_accelerator to cuda (auto detect)",
    "[2025-03-01 10:00:02,120] [INFO] [logging.py:128:log_dist] [Rank 0] step=10, skipped=0, "
    "lr=[0.0001], mom=[(0.9, 0.999)]",
    "[2025-03-01 10:00:02,121] [INFO] [config.py:1003:print]   zero_allow_untested_optimizer  "
    "False",
    "steps: 100 loss: 2.3456 iter time (s): 0.123 samples/sec: 256.0",
    "node-a:1234:1240 [0] NCCL INFO Channel 00/02 :    0   1",
    "node-a:1234:1240 [0] NCCL INFO NET/Plugin: Could not find: libnccl-net.so. Using internal "
    "network plugin.",
    "node-a:1234:1240 [0] NCCL INFO comm 0x55d5 rank 0 nranks 2 cudaDev 0 busId 1000 - Init "
    "COMPLETE",
    "Using /root/.cache/torch_extensions/py311_cu121 as PyTorch extensions root...",
    "ninja: no work to do.",
    "  error_rate: 0.01, ignore_errors: true, stderr: captured",
    "[Errno 111] Connection refused",
    "warmup_steps=100 warn_once=False",
]


def filled(n: int, max_lines: int = 100_000) -> LogBuffer:
    buffer = LogBuffer(max_lines)
    buffer.extend(f"line {i}" for i in range(n))
    return buffer


# -- the ring -----------------------------------------------------------------


def test_empty_buffer() -> None:
    buffer = LogBuffer()
    assert len(buffer) == 0
    assert (buffer.first_index, buffer.last_index, buffer.end_index) == (0, -1, 0)
    assert buffer.first_error() is None
    assert buffer.find("x", 0) is None
    assert buffer.matches_in(0, "x") == []
    with pytest.raises(IndexError):
        buffer.line(0)


def test_append_and_extend_bump_version_once_each() -> None:
    buffer = LogBuffer()
    buffer.append("one")
    assert buffer.version == 1
    buffer.extend(["two", "three"])
    assert buffer.version == 2
    buffer.extend([])
    assert buffer.version == 2
    assert [buffer[i] for i in range(3)] == ["one", "two", "three"]


def test_text_with_newlines_is_several_lines() -> None:
    buffer = LogBuffer()
    buffer.append("a\nb\n")
    buffer.append("")
    assert [buffer[i] for i in range(len(buffer))] == ["a", "b", ""]


def test_ring_drops_oldest_and_keeps_absolute_indices() -> None:
    buffer = filled(25, max_lines=10)
    assert len(buffer) == 10
    assert (buffer.first_index, buffer.last_index, buffer.dropped) == (15, 24, 15)
    assert buffer.line(15) == "line 15"
    assert buffer.line(24) == "line 24"
    assert 14 not in buffer
    with pytest.raises(IndexError, match="line 14 is not held"):
        buffer.line(14)
    buffer.append("line 25")
    assert buffer.first_index == 16
    assert buffer.line(25) == "line 25"
    assert buffer.line(16) == "line 16"


def test_clear_keeps_indices_going() -> None:
    buffer = filled(7, max_lines=5)
    buffer.append("Traceback (most recent call last):")
    buffer.clear()
    assert len(buffer) == 0
    assert buffer.first_error() is None
    assert buffer.error_count == 0
    buffer.extend(["after 1", "after 2"])
    assert (buffer.first_index, buffer.last_index) == (8, 9)
    assert buffer.line(9) == "after 2"
    buffer.extend(f"more {i}" for i in range(10))
    assert len(buffer) == 5
    assert buffer.line(buffer.last_index) == "more 9"


def test_lines_are_stored_as_drawn() -> None:
    assert clean_line("\x1b[31mred\x1b[0m text") == "red text"
    assert clean_line("a\tb") == "a       b"
    assert clean_line(" 10%|#   |\r 50%|#####   |\r100%|########|") == "100%|########|"
    assert clean_line("bell\x07") == "bell\u2407"  # the control picture: ␇
    assert len(clean_line("x" * (MAX_LINE_CHARS + 10))) == MAX_LINE_CHARS
    buffer = LogBuffer()
    buffer.append("\x1b[1;33m[WARNING]\x1b[0m slow")
    assert buffer.line(0) == "[WARNING] slow"
    assert buffer.max_line_length == len("[WARNING] slow")


# -- severity -------------------------------------------------------------------


@pytest.mark.parametrize("line", ERROR_LINES)
def test_error_lines(line: str) -> None:
    assert classify(line) is Severity.ERROR


@pytest.mark.parametrize("line", WARNING_LINES)
def test_warning_lines(line: str) -> None:
    assert classify(line) is Severity.WARNING


@pytest.mark.parametrize("line", NORMAL_LINES)
def test_normal_lines(line: str) -> None:
    assert classify(line) is Severity.NORMAL


def test_a_traceback_is_an_error_from_header_to_exception() -> None:
    buffer = LogBuffer()
    buffer.extend(
        [
            "step 1",
            "[rank1]: Traceback (most recent call last):",
            '[rank1]:   File "/work/agent/train.py", line 10, in <module>',
            "[rank1]:     main()",
            "[rank1]:     ^^^^^^",
            "[rank1]: ValueError: bad shard",
            "step 2",
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in <module>',
            "KeyboardInterrupt",
            "",
            "cleanup done",
        ]
    )
    severities = [buffer.severity(i) for i in range(len(buffer))]
    error, normal = Severity.ERROR, Severity.NORMAL
    assert severities == [normal] + [error] * 5 + [normal] + [error] * 3 + [normal, normal]
    assert buffer.error_count == 8
    assert buffer.first_error() == 1


def test_counts_and_first_error_follow_drops() -> None:
    buffer = LogBuffer(max_lines=5)
    buffer.extend(["ok", "RuntimeError: one", "[WARNING] w", "ok", "RuntimeError: two"])
    assert buffer.first_error() == 1
    assert (buffer.error_count, buffer.warning_count) == (2, 1)
    buffer.extend(["ok", "ok"])  # drops lines 0 and 1
    assert buffer.first_error() == 4
    assert (buffer.error_count, buffer.warning_count) == (1, 1)
    buffer.extend(["ok"] * 3)  # drops 2, 3 and 4
    assert buffer.first_error() is None
    assert (buffer.error_count, buffer.warning_count) == (0, 0)


# -- search ---------------------------------------------------------------------

SEARCH_LINES = [
    "[INFO] start",  # 0
    "NCCL INFO Bootstrap : Using eth0",  # 1
    "step=1 loss=2.5",  # 2
    "node-b [1] NCCL WARN Call to connect returned Connection refused",  # 3
    "step=2 loss=2.4",  # 4
    "nccl info ring 0",  # 5
    "step=3 loss=2.3",  # 6
]


def search_buffer() -> LogBuffer:
    buffer = LogBuffer()
    buffer.extend(SEARCH_LINES)
    return buffer


def test_find_forward_is_case_insensitive_and_inclusive() -> None:
    buffer = search_buffer()
    assert buffer.find("nccl", 0) == 1
    assert buffer.find("nccl", 1) == 1
    assert buffer.find("nccl", 2) == 3
    assert buffer.find("NCCL", 4) == 5


def test_find_wraps_or_not() -> None:
    buffer = search_buffer()
    assert buffer.find("nccl", 6) == 1
    assert buffer.find("nccl", 6, wrap=False) is None
    assert buffer.find("nccl", 0, backwards=True) == 5
    assert buffer.find("nccl", 0, backwards=True, wrap=False) is None


def test_find_backwards() -> None:
    buffer = search_buffer()
    assert buffer.find("nccl", 4, backwards=True) == 3
    assert buffer.find("nccl", 3, backwards=True) == 3
    assert buffer.find("nccl", 2, backwards=True) == 1


def test_find_clamps_start_and_misses() -> None:
    buffer = search_buffer()
    assert buffer.find("loss", -10) == 2
    assert buffer.find("loss", 99, backwards=True) == 6
    assert buffer.find("no such text", 0) is None


def test_regex_queries() -> None:
    buffer = search_buffer()
    assert buffer.find(r"re:loss=2\.[34]", 0) == 4
    assert buffer.find(r"re:NCCL (WARN|ERROR)", 0) == 3
    # A regex is case-sensitive unless it says otherwise.
    assert buffer.find("re:nccl", 0) == 5
    assert buffer.find("re:(?i)nccl", 0) == 1
    assert buffer.matches_in(2, r"re:\d") == [(5, 6), (12, 13), (14, 15)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("re:(unclosed", "bad regex '(unclosed': missing ), unterminated subpattern"),
        ("re:[a-", "bad regex '[a-': unterminated character set"),
        ("re:", "empty regex"),
        ("", "empty search"),
    ],
)
def test_bad_queries_raise_one_line_value_errors(query: str, message: str) -> None:
    buffer = search_buffer()
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        buffer.find(query, 0)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError):
        LogSearch(buffer, query)


def test_matches_in_gives_spans_for_highlighting() -> None:
    buffer = LogBuffer()
    buffer.append("NCCL WARN nccl WARN")
    assert buffer.matches_in(0, "nccl") == [(0, 4), (10, 14)]
    assert buffer.matches_in(0, "warn") == [(5, 9), (15, 19)]
    assert buffer.matches_in(0, "absent") == []
    assert buffer.matches_in(5, "nccl") == []
    # Empty regex matches are no spans.
    assert buffer.matches_in(0, "re:x*") == []


def test_find_after_drops_uses_absolute_indices() -> None:
    buffer = LogBuffer(max_lines=4)
    buffer.extend(["needle 0", "hay", "needle 2", "hay", "hay", "needle 5", "hay"])
    assert buffer.first_index == 3
    assert buffer.find("needle", 0) == 5
    assert buffer.find("needle", 6) == 5
    assert buffer.find("needle", 4, backwards=True) == 5


def test_100k_lines_appended_dropped_and_searched() -> None:
    buffer = LogBuffer(max_lines=100_000)
    total = 130_000
    buffer.extend(
        "RuntimeError: boom"
        if i in (10, 70_000)
        else f"[rank1] step={i} NCCL WARN retry"
        if i % 25_000 == 0
        else f"[rank1] step={i} loss={i % 97 / 10:.2f}"
        for i in range(total)
    )
    assert len(buffer) == 100_000
    assert buffer.first_index == 30_000
    assert buffer.line(129_999) == f"[rank1] step=129999 loss={129_999 % 97 / 10:.2f}"
    assert buffer.first_error() == 50_000  # NCCL WARN; the RuntimeError at 10 dropped
    assert buffer.find("nccl warn", 0) == 50_000
    assert buffer.find("nccl warn", 100_001) == 125_000
    assert buffer.find("nccl warn", 125_001) == 50_000  # wrapped
    assert buffer.find("nccl warn", 129_999, backwards=True) == 125_000
    assert buffer.find("re:step=1[0-9]{5} ", buffer.first_index) == 100_000
    assert buffer.find("never there", 60_000) is None
    search = LogSearch(buffer, "nccl warn")
    assert len(search) == 4  # 50k, 75k, 100k, 125k
    assert search.nearest(0) == 50_000
    assert search.nearest(125_001) == 50_000
    assert search.nearest(125_001, wrap=False) is None
    assert search.ordinal(100_000) == 3


# -- LogSearch ------------------------------------------------------------------


def test_log_search_steps_counts_and_wraps() -> None:
    buffer = search_buffer()
    search = LogSearch(buffer, "nccl")
    assert len(search) == 3
    assert search.nearest(0) == 1
    assert search.nearest(2) == 3
    assert search.nearest(6) == 1
    assert search.nearest(6, wrap=False) is None
    assert search.nearest(2, backwards=True) == 1
    assert search.nearest(0, backwards=True) == 5
    assert search.nearest(0, backwards=True, wrap=False) is None
    assert [search.ordinal(i) for i in (1, 2, 3, 5)] == [1, None, 2, 3]
    assert search.spans(3) == [(11, 15)]


def test_log_search_updates_with_new_and_dropped_lines() -> None:
    buffer = LogBuffer(max_lines=5)
    buffer.extend(["hit 0", "miss", "hit 2"])
    search = LogSearch(buffer, "hit")
    assert len(search) == 2
    buffer.extend(["hit 3", "miss", "miss", "hit 6"])  # drops 0 and 1
    search.update()
    assert len(search) == 3
    assert search.nearest(0) == 2
    assert search.ordinal(6) == 3
    buffer.extend(["miss"] * 20)  # more than the ring: every hit dropped
    search.update()
    assert len(search) == 0
    assert search.nearest(0) is None
    buffer.append("hit 27")
    search.update()
    assert search.nearest(0) == 27


def test_log_search_forgets_many_dropped_matches() -> None:
    buffer = LogBuffer(max_lines=100)
    search = LogSearch(buffer, "x")
    for _ in range(50):
        buffer.extend(["x"] * 100)
        search.update()
        assert len(search) == 100
        assert search.nearest(0) == buffer.first_index
