"""The one-line cause of a failed rank, from the end of real logs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.jobs.node.failure_cause import MAX_CAUSE_CHARS, TERMINATE_CAUSE, failure_cause

# deepspeedai/DeepSpeed#6441 (and deepspeedai/Megatron-DeepSpeed#439): torch's [rankN]:
# prefix on every line of a resume at another world size.
ZERO_WORLD_SIZE = """\
[rank5]: Traceback (most recent call last):
[rank5]:   File "/workspace/pretrain_gpt.py", line 356, in <module>
[rank5]:     pretrain(train_valid_test_datasets_provider,
[rank5]:   File "/usr/local/lib/python3.10/dist-packages/deepspeed/runtime/engine.py", line 2981, \
in _load_zero_checkpoint
[rank5]:     raise ZeRORuntimeException("The checkpoint being loaded used a DP " \\
[rank5]: deepspeed.runtime.zero.utils.ZeRORuntimeException: The checkpoint being loaded used a DP \
world size of 8 but the current world size is 16. Automatic adjustment of ZeRO's optimizer \
state partitioning with a new world size is not currently supported.
"""

# THUDM/GLM#136: DeepSpeed's own INFO line printed between the frames of the traceback.
INTERLEAVED = """\
Traceback (most recent call last):
  File "pretrain_glm.py", line 673, in <module>
    main()
  File "/data/users/x/utils.py", line 339, in load_checkpoint
[2023-03-21 20:28:05,674] [INFO] [torch_checkpoint_engine.py:21:load] [Torch] Loading \
checkpoint from /data/glm-10b-chinese-mp4/80000/mp_rank_00_model_states.pt...
    load_lr_scheduler_states=not args.no_load_lr_scheduler)
  File "/x/site-packages/deepspeed/runtime/engine.py", line 2950, in _load_zero_checkpoint
    raise ZeRORuntimeException("The checkpoint being loaded used a DP " \\
deepspeed.runtime.zero.utils.ZeRORuntimeException: The checkpoint being loaded used a DP world \
size of 256 but the current world size is 2. Automatic adjustment of ZeRO's optimizer state \
partitioning with a new world size is not currently supported.
g2001:34292:39682 [7] NCCL INFO [Service thread] Connection closed by localRank 7
"""

# vllm-project/vllm#10453: an NCCL failure in all_reduce; the message goes on over lines.
NCCL_ERROR = """\
h100-2:412:412 [0] NCCL INFO init.cc:1929 -> 3
[rank1]: Traceback (most recent call last):
[rank1]:   File "/vllm-workspace/test.py", line 8, in <module>
[rank1]:     dist.all_reduce(data, op=dist.ReduceOp.SUM)
[rank1]:            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
[rank1]: torch.distributed.DistBackendError: NCCL error in: \
../torch/csrc/distributed/c10d/NCCLUtils.hpp:317, internal error - please report this issue to \
the NCCL developers, NCCL version 2.21.5
[rank1]: ncclInternalError: Internal check failed.
[rank1]: Last error:
"""

# bshall/hubert#1: the cause after torch.multiprocessing's wrapper; the last traceback wins.
CHAINED = """\
Traceback (most recent call last):
  File "E:\\VC\\hubert\\train.py", line 448, in <module>
    mp.spawn(
torch.multiprocessing.spawn.ProcessRaisedException:

-- Process 0 terminated with the following error:
Traceback (most recent call last):
  File "H:\\CONDA\\envs\\x\\lib\\site-packages\\torch\\distributed\\distributed_c10d.py", \
line 727, in _new_process_group_helper
    raise RuntimeError("Distributed package doesn't have NCCL " "built in")
RuntimeError: Distributed package doesn't have NCCL built in
"""


# hiyouga/LlamaFactory#7396 (PyTorch 2.x): each rank's watchdog line, torch's [rankN]:
# prefix behind the launcher's own, the work counters on the next line; the process aborts.
WATCHDOG_2X = """\
[80746] [rank0]:[E321 02:07:08.408271257 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught \
collective operation timeout: WorkNCCL(SeqNum=1580, OpType=ALLREDUCE, NumelIn=466119168, \
NumelOut=466119168, Timeout(ms)=600000) ran for 600060 milliseconds before timing out.
[80748] [rank0]:[E321 02:07:08.465150152 ProcessGroupNCCL.cpp:1664] [PG 1 Rank 0] Exception \
(either an error or timeout) detected by watchdog at work: 1580, last enqueued NCCL work: 1582, \
last completed NCCL work: 1579.
"""

# hiyouga/LlamaFactory#6269 (PyTorch 2.x, ZeRO's reduce-scatter).
WATCHDOG_REDUCE_SCATTER = """\
[rank0]:[E1206 18:44:12.715298746 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught collective \
operation timeout: WorkNCCL(SeqNum=7753, OpType=_REDUCE_SCATTER_BASE, NumelIn=544997376, \
NumelOut=68124672, Timeout(ms)=600000) ran for 600061 milliseconds before timing out.
[rank0]:[E1206 18:44:12.715588844 ProcessGroupNCCL.cpp:1664] [PG 1 Rank 0] Exception (either an \
error or timeout) detected by watchdog at work: 7753, last enqueued NCCL work: 7755, last \
completed NCCL work: 7752.
"""

# OFA-Sys/OFA#271 (PyTorch 1.x): no rank prefix, no Numel*, no work counters.
WATCHDOG_1X = """\
[E ProcessGroupNCCL.cpp:737] [Rank 1] Watchdog caught collective operation timeout: \
WorkNCCL(SeqNum=469508, OpType=ALLREDUCE, Timeout(ms)=1800000) ran for 1802212 milliseconds \
before timing out.
"""


def test_an_nccl_watchdog_timeout_is_the_cause_in_every_format() -> None:
    assert failure_cause(WATCHDOG_2X.splitlines()) == (
        "NCCL watchdog timeout: ALLREDUCE (SeqNum 1580) ran 600060 ms, timeout 600000 ms;"
        " last enqueued 1582, last completed 1579"
    )
    assert failure_cause(WATCHDOG_REDUCE_SCATTER.splitlines()) == (
        "NCCL watchdog timeout: _REDUCE_SCATTER_BASE (SeqNum 7753) ran 600061 ms,"
        " timeout 600000 ms; last enqueued 7755, last completed 7752"
    )
    assert failure_cause(WATCHDOG_1X.splitlines()) == (
        "NCCL watchdog timeout: ALLREDUCE (SeqNum 469508) ran 1802212 ms, timeout 1800000 ms"
    )


def test_the_watchdog_wins_over_the_abort_that_follows_it() -> None:
    # The 2.x abort after the watchdog: a DistBackendError whose what() repeats the timeout,
    # then C++ frames; and a Python traceback of the rank's own after a 1.x one.
    aborted = [
        *WATCHDOG_2X.splitlines(),
        "terminate called after throwing an instance of 'c10::DistBackendError'",
        "  what():  [PG 1 Rank 0] Process group watchdog thread terminated with exception",
        *[f"frame #{i}: <unknown function> + 0x{i:x} (0x7f in libc10.so)" for i in range(30)],
    ]
    cause = failure_cause(aborted)
    assert cause is not None and cause.startswith("NCCL watchdog timeout: ALLREDUCE (SeqNum 1580)")
    traced = [*WATCHDOG_1X.splitlines(), *ZERO_WORLD_SIZE.splitlines()]
    cause = failure_cause(traced)
    assert cause is not None and cause.startswith("NCCL watchdog timeout: ALLREDUCE (SeqNum 4695")


# deepspeedai/DeepSpeed#3869 (PyTorch 1.x allocator message, then DeepSpeed's launcher).
OOM_1X = """\
Traceback (most recent call last):
  File "bloom-inference-scripts/bloom-ds-zero-inference.py", line 1, in <module>
torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 978.00 MiB (GPU 0; 4.00 GiB \
total capacity; 1.68 GiB already allocated; 0 bytes free; 2.72 GiB reserved in total by PyTorch) \
If reserved memory is >> allocated memory try setting max_split_size_mb to avoid fragmentation.  \
See documentation for Memory Management and PYTORCH_CUDA_ALLOC_CONF
[2023-07-04 17:31:27,755] [INFO] [launch.py:315:sigkill_handler] Killing subprocess 953850
"""

# Ucas-HaoranWei/Vary#18 (PyTorch 2.x wording, with its "capacty" typo).
OOM_2X = """\
Traceback (most recent call last):
  File "vary/train/train_qwen_vary.py", line 1, in <module>
torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.97 GiB. GPU 2 has a total \
capacty of 39.43 GiB of which 982.31 MiB is free. Including non-PyTorch memory, this process \
has 38.47 GiB memory in use.
"""

# NVIDIA/nccl#1410: NCCL's unhandled CUDA error names the CUDA failure on a later line.
NCCL_CUDA_ERROR = """\
[rank7]: Traceback (most recent call last):
[rank7]:   File "check.py", line 1, in <module>
[rank7]: torch.distributed.DistBackendError: NCCL error in: \
../torch/csrc/distributed/c10d/NCCLUtils.hpp:275, unhandled cuda error (run with NCCL_DEBUG=INFO \
for details), NCCL version 2.20.5
[rank7]: ncclUnhandledCudaError: Call to CUDA function failed.
[rank7]: Last error:
[rank7]: Cuda failure 1 'invalid argument'
"""


def test_cuda_out_of_memory_is_its_figures() -> None:
    assert failure_cause(OOM_1X.splitlines()) == (
        "CUDA out of memory on GPU 0: tried 978.00 MiB, 0 bytes free of 4.00 GiB"
    )
    assert failure_cause(OOM_2X.splitlines()) == (
        "CUDA out of memory on GPU 2: tried 1.97 GiB, 982.31 MiB free of 39.43 GiB"
    )


def test_nccls_unhandled_cuda_error_names_the_cuda_failure() -> None:
    assert failure_cause(NCCL_CUDA_ERROR.splitlines()) == (
        "NCCL: unhandled CUDA error: Cuda failure 1 'invalid argument'"
    )
    # The same with an out-of-memory failure is a GPU's, not the host's.
    oom = NCCL_CUDA_ERROR.replace(
        "Cuda failure 1 'invalid argument'", "Cuda failure 2 'out of memory'"
    )
    assert failure_cause(oom.splitlines()) == (
        "CUDA out of memory in NCCL (Cuda failure 2 'out of memory')"
    )


def test_a_world_size_mismatch_is_named() -> None:
    cause = failure_cause(ZERO_WORLD_SIZE.splitlines())
    assert cause is not None
    assert cause.startswith("ZeRORuntimeException: The checkpoint being loaded used a DP world")
    assert "world size of 8 but the current world size is 16" in cause


def test_log_lines_between_frames_do_not_hide_the_exception() -> None:
    cause = failure_cause(INTERLEAVED.splitlines())
    assert cause is not None and "world size of 256 but the current world size is 2" in cause


def test_an_nccl_error_is_named_with_its_version() -> None:
    # NCCL's "Last error:" is empty here: the error's name and NCCL's version are all it says.
    assert failure_cause(NCCL_ERROR.splitlines()) == "NCCL internal error (NCCL 2.21.5)"


def test_the_last_traceback_is_the_cause() -> None:
    assert failure_cause(CHAINED.splitlines()) == (
        "RuntimeError: Distributed package doesn't have NCCL built in"
    )


def test_argparse_gantry_and_cpp_errors() -> None:
    argparse = ["usage: train.py [-h] --deepspeed_config X", "train.py: error: unrecognized x"]
    assert failure_cause(argparse) == "unrecognized x"
    spaced = ["python -m agent.train: error: --data d.jsonl: no such file or directory"]
    assert failure_cause(spaced) == "--data d.jsonl: no such file or directory"
    assert failure_cause(["gantry: --data d.jsonl: no such file"]) == "--data d.jsonl: no such file"
    # pytorch/pytorch issues: what a C++ exception leaves when it escapes.
    cpp = [
        "terminate called after throwing an instance of 'c10::DistBackendError'",
        "  what():  [PG 0 Rank 1] Process group watchdog thread terminated with exception",
    ]
    assert (
        failure_cause(cpp)
        == "[PG 0 Rank 1] Process group watchdog thread terminated with exception"
    )


# A Hugging Face Trainer script under DeepSpeed (gloo, CPU) that never called
# destroy_process_group: its work done, one rank aborted as the interpreter tore down.
# Seen in this repository's tests/test_hf_example.py before examples/hf-trainer/train.py
# destroyed its group; the same abort is pytorch/pytorch#190489's.
ABORT_AT_EXIT = """\
{'train_runtime': '1.028', 'train_samples_per_second': '93.38', 'train_steps_per_second': \
'5.836', 'train_loss': '3.628', 'epoch': '1.8'}
Writing model shards: 100%|##########| 1/1 [00:00<00:00, 220.23it/s]
[2026-12-06 22:21:02,954] [WARNING] [lr_schedules.py:759:get_lr] Attempting to get learning \
rate from scheduler before it has started
terminate called without an active exception
"""


def test_an_abort_at_exit_points_at_the_process_group() -> None:
    assert failure_cause(ABORT_AT_EXIT.splitlines()) == TERMINATE_CAUSE
    assert "destroy_process_group()" in TERMINATE_CAUSE and "os._exit(0)" in TERMINATE_CAUSE
    # An exception's own what() says more, and wins.
    thrown = [
        "terminate called after throwing an instance of 'c10::Error'",
        "  what():  [enforce fail at pair.cc:446] op.preamble.length <= op.nbytes",
    ]
    assert failure_cause(thrown) == "[enforce fail at pair.cc:446] op.preamble.length <= op.nbytes"


def test_nothing_recognisable_and_bounded_length() -> None:
    assert failure_cause(["step 10 loss 2.3", "NCCL WARN something"]) is None
    assert failure_cause([]) is None
    long = ["Traceback (most recent call last):", "ValueError: " + "x" * 5000]
    cause = failure_cause(long)
    assert cause is not None and len(cause) == MAX_CAUSE_CHARS and cause.endswith("...")


@given(st.lists(st.text(max_size=200), max_size=30))
def test_any_text_gives_one_line_or_none(lines: list[str]) -> None:
    cause = failure_cause(lines)
    assert cause is None or ("\n" not in cause and len(cause) <= MAX_CAUSE_CHARS)
