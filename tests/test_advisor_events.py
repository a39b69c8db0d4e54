"""The advisor's findings from the agents' diagnosis events (issue 15's contract): NCCL
watchdog timeouts, OOM by kind, XIDs, socket fallback and the transport, NCCL errors, a
failed rank's cause; and the console's input carrying attempts, world and notes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from gantry.v1 import job_pb2

from console.model.advice import APPLICABLE, advisor_input, findings_for
from console.model.advisor import EventNote, evaluate
from console.model.cluster import ClusterStore
from console.model.jobs import EK, JobsStore
from console.model.remedies import plan_remedy
from tests.test_advisor import given, only, stream

NOW = 10_000.0


def alert(
    name: str,
    rank: int = 0,
    node: str = "node-a",
    *,
    time: float = NOW - 30,
    line: str = "",
    attempt: int | None = None,
    fields: Mapping[str, str] | None = None,
    **details: str,
) -> EventNote:
    details = {**(fields or {}), **details}
    said = {"alert": name, "line": line, **details}
    message = f"rank {rank}: {details.get('cause', name)}"
    return EventNote("alert", rank, node, time, message, said, attempt)


def nccl(finding: str, rank: int, node: str, line: str = "", **details: str) -> EventNote:
    said: Mapping[str, str] = {"finding": finding, "line": line, **details}
    return EventNote("nccl", rank, node, NOW - 60, f"rank {rank}: {finding}", said)


# --- NCCL watchdog timeouts ---------------------------------------------------------------

# https://github.com/hiyouga/LLaMA-Factory/issues/7396 (PyTorch 2.x)
PT2_WATCHDOG = (
    "[rank0]:[E321 02:07:08.408271257 ProcessGroupNCCL.cpp:607] [Rank 0] Watchdog caught "
    "collective operation timeout: WorkNCCL(SeqNum=1580, OpType=ALLREDUCE, NumelIn=466119168, "
    "NumelOut=466119168, Timeout(ms)=600000) ran for 600060 milliseconds before timing out."
)
PT2_WORK = (
    "[rank3]:[E321 02:07:08.465224069 ProcessGroupNCCL.cpp:1664] [PG 1 Rank 3] Exception "
    "(either an error or timeout) detected by watchdog at work: 1580, last enqueued NCCL work: "
    "1582, last completed NCCL work: 1579."
)
# https://github.com/OFA-Sys/OFA/issues/271 (PyTorch 1.x)
PT1_WATCHDOG = (
    "[E ProcessGroupNCCL.cpp:737] [Rank 1] Watchdog caught collective operation timeout: "
    "WorkNCCL(SeqNum=469508, OpType=ALLREDUCE, Timeout(ms)=1800000) ran for 1802212 "
    "milliseconds before timing out."
)
WATCHDOG = "nccl_watchdog_timeout"


def test_watchdog_timeout_names_the_op_and_the_ranks_that_did_not_report() -> None:
    timed = {"op": "ALLREDUCE", "seq": "1580", "timeout_ms": "600000", "ran_ms": "600060"}
    work = {"seq": "1580", "last_enqueued": "1582", "last_completed": "1579"}
    notes = [
        alert(WATCHDOG, 0, line=PT2_WATCHDOG, fields=timed),
        alert(WATCHDOG, 4, "node-b", line=PT2_WATCHDOG.replace("Rank 0", "Rank 4"), fields=timed),
        alert(WATCHDOG, 0, line=PT2_WORK.replace("Rank 3", "Rank 0"), fields=work),
        alert(WATCHDOG, 3, line=PT2_WORK, fields=work),
    ]
    inp = dataclasses.replace(given(now=NOW), notes=notes, world_size=8)
    finding = only(evaluate(inp), "watchdog_timeout")
    assert finding.severity == "critical"
    assert finding.title == "NCCL watchdog timeout in ALLREDUCE SeqNum=1580"
    assert finding.evidence.startswith(
        "ALLREDUCE SeqNum=1580 timed out after 600000 ms (10 min), ran 600060 ms; "
        "reported by ranks 0, 3, 4 (3 of 8)"
    )
    assert "ranks 1, 2, 5, 6, 7 reported no timeout: the others may have waited for them" in (
        finding.evidence
    )
    remedy = finding.remedy
    assert remedy is not None and remedy.kind == "advice"
    assert "TORCH_NCCL_TRACE_BUFFER_SIZE" in remedy.details
    assert "only if the op is legitimately slow" in remedy.details


def test_watchdog_timeout_names_the_rank_behind() -> None:
    def at(rank: int, node: str, completed: str) -> EventNote:
        return alert(WATCHDOG, rank, node, op="ALLGATHER", seq="88", last_completed=completed)

    notes = [at(0, "node-a", "87"), at(1, "node-a", "87"), at(2, "node-b", "80")]
    finding = only(evaluate(dataclasses.replace(given(now=NOW), notes=notes)), "watchdog_timeout")
    assert "lowest last completed: rank 2 at 80 (others up to 87): the others waited for it" in (
        finding.evidence
    )
    assert finding.remedy is not None
    assert finding.remedy.summary == "Look at rank 2 on node-b: the others waited for it"


def test_watchdog_timeout_pytorch_1_lines() -> None:
    timed = {"op": "ALLREDUCE", "seq": "469508", "timeout_ms": "1800000", "ran_ms": "1802212"}
    notes = [
        alert(WATCHDOG, r, "node-a" if r < 4 else "node-b", line=PT1_WATCHDOG, fields=timed)
        for r in (1, 3, 2, 6, 7)
    ]
    inp = dataclasses.replace(given(now=NOW, running=False), notes=notes, world_size=8)
    finding = only(evaluate(inp), "watchdog_timeout")  # a finished job: why it ended
    assert "timed out after 1800000 ms (30 min)" in finding.evidence
    assert "ranks 0, 4, 5 reported no timeout" in finding.evidence


# --- out of memory, by kind -----------------------------------------------------------------

# https://github.com/NVIDIA/nccl/issues/1235
NCCL_CUDA_OOM = (
    "ng30903:3063028:3066152 [3] include/alloc.h:178 NCCL WARN Cuda failure 'out of memory'"
)


def test_nccl_cuda_failure_oom_is_the_gpus_never_the_hosts() -> None:
    for note in (
        alert("nccl_cuda_oom", 3, line=NCCL_CUDA_OOM, cause="NCCL: CUDA out of memory"),
        alert("oom", 3, line=NCCL_CUDA_OOM),  # a journal from before issue 15
    ):
        inp = dataclasses.replace(given(now=NOW), notes=[note])
        finding = only(evaluate(inp), "oom")
        assert finding.title == "GPU out of memory"
        assert finding.evidence.startswith("CUDA out of memory 30 s ago, rank 3 (node-a)")
        assert finding.remedy is not None and finding.remedy.kind == "halve-micro-batch"


def test_oom_alerts_by_kind() -> None:
    cuda = alert("cuda_oom", 3, tried="2.00 GiB", free="1.20 GiB", total="79.15 GiB", gpu="0")
    finding = only(evaluate(dataclasses.replace(given(now=NOW), notes=[cuda])), "oom")
    assert finding.evidence == (
        "CUDA out of memory 30 s ago, rank 3 (node-a): tried 2.00 GiB, 1.20 GiB free of "
        "79.15 GiB on GPU 0"
    )
    at_one = dataclasses.replace(given(now=NOW, micro_batch=1), notes=[cuda])
    remedy = only(evaluate(at_one), "oom").remedy
    assert remedy is not None and remedy.kind == "enable-gradient-checkpointing"
    zero = alert("zero_alloc", 1, cause="ZeRO-3 could not allocate 4.00 GiB")
    assert only(evaluate(dataclasses.replace(given(now=NOW), notes=[zero])), "oom").title == (
        "GPU out of memory"
    )
    for host in (
        alert("host_oom", 2, pid="4242", cause="killed by the kernel's OOM killer"),
        alert("oom", 2, line="Out of memory: Killed process 4242 (python) total-vm:123kB"),
    ):
        finding = only(evaluate(dataclasses.replace(given(now=NOW), notes=[host])), "oom")
        assert finding.title == "Host out of memory"
        assert finding.remedy is not None and finding.remedy.kind == "advice"


# --- XIDs and missing GPUs ----------------------------------------------------------------

# https://github.com/NVIDIA/NVSentinel/issues/155
XID_79 = "NVRM: Xid (PCI:0000:44:00): 79, GPU has fallen off the bus"


def test_fatal_xid_offers_to_go_on_without_the_node() -> None:
    xid = alert(
        "xid",
        5,
        "node-b",
        line=XID_79,
        xid="79",
        pci="0000:44:00",
        gpu="3",
        action="reset_gpu",
        description="GPU has fallen off the bus",
    )
    finding = only(evaluate(dataclasses.replace(given(now=NOW), notes=[xid])), "xid")
    assert finding.severity == "critical"
    assert finding.title == "GPU 3 on node-b: Xid 79 GPU has fallen off the bus"
    assert finding.evidence.startswith("Xid 79 on GPU 3 on node-b (PCI 0000:44:00), 30 s ago")
    assert repr(XID_79) in finding.evidence
    remedy = finding.remedy
    assert remedy is not None and remedy.kind == "exclude-node" and "exclude-node" in APPLICABLE
    spec = job_pb2.JobSpec(name="j", nodes=[job_pb2.NodeSlots(node=f"node-{n}") for n in "ab"])
    plan = plan_remedy(remedy, spec)
    assert plan.exclude == ("node-b",) and plan.spec == spec


def test_other_xids_are_warnings_or_nothing() -> None:
    app = alert("xid", 0, xid="13", action="restart_job", description="Graphics Engine Exception")
    finding = only(evaluate(dataclasses.replace(given(now=NOW), notes=[app])), "xid")
    assert finding.severity == "warning" and finding.remedy is not None
    assert finding.remedy.kind == "advice"
    quiet = alert("xid", 0, xid="31", action="none")
    assert evaluate(dataclasses.replace(given(now=NOW), notes=[quiet])) == []


def test_missing_gpu() -> None:
    gone = alert("gpu_missing", -1, "node-c", cause="GPU 0000:b3:00.0 failed to initialise")
    finding = only(evaluate(dataclasses.replace(given(now=NOW), notes=[gone])), "gpu_missing")
    assert finding.severity == "critical" and finding.remedy is not None
    assert finding.remedy.kind == "exclude-node" and finding.remedy.params == {"node": "node-c"}


# --- the transport --------------------------------------------------------------------------

# https://github.com/NVIDIA/nccl/issues/1267
SOCKET = "instance-8g-96c-3:2744870:2745046 [0] NCCL INFO NET/Socket : Using [0]ens7:10.128.0.32<0>"


def test_socket_fallback_is_a_finding_with_the_fix() -> None:
    notes = [nccl("ib_fallback", 0, "node-a", SOCKET), nccl("ib_fallback", 2, "node-b", SOCKET)]
    inp = dataclasses.replace(given(now=NOW), notes=notes)
    finding = only(evaluate(inp), "ib_fallback")
    assert finding.severity == "warning"
    assert "NCCL said 'instance-8g-96c-3:2744870:2745046 [0] NCCL INFO NET/Socket" in (
        finding.evidence
    )
    assert "(2 ranks on node-a, node-b)" in finding.evidence
    assert finding.remedy is not None and "NCCL_IB_DISABLE=1" in finding.remedy.summary
    assert "NCCL_IB_HCA" in finding.remedy.details
    assert evaluate(dataclasses.replace(inp, running=False)) == []  # no speed advice


def test_network_rule_cites_the_transport() -> None:
    inp = stream("network_bound")
    network = only(evaluate(inp), "network-bound")
    assert "NCCL transport not reported (NCCL_DEBUG=INFO)" in network.evidence
    notes = [
        nccl("transport", 0, "node-a", transport="NET/Socket"),
        nccl("transport", 0, "node-a", transport="P2P/IPC"),
        nccl("transport", 1, "node-b", transport="NET/Socket"),
        nccl("transport", 1, "node-b", transport="P2P/IPC"),
    ]
    network = only(evaluate(dataclasses.replace(inp, notes=notes)), "network-bound")
    assert network.evidence.endswith("; NCCL transport: Socket · P2P/IPC (node-a, node-b)")
    ib = [nccl("transport", 0, "node-a", transport="NET/IB", gdr="1")]
    network = only(evaluate(dataclasses.replace(inp, notes=ib)), "network-bound")
    assert network.evidence.endswith("; NCCL transport: IB+GDR (node-a)")


# --- NCCL errors, training alerts, a failed rank's cause -------------------------------------

# https://github.com/NVIDIA/nccl/issues/1235
PEER_CLOSED = (
    "ng30903:3063025:3066048 [0] misc/socket.cc:49 NCCL WARN socketProgress: Connection closed "
    "by remote peer ng30903-ib.narval.calcul.quebec<51159>"
)


def test_a_lost_peer_points_at_the_rank_that_failed_first() -> None:
    notes = [
        alert(
            "nccl_remote_exited",
            0,
            line=PEER_CLOSED,
            time=NOW - 20,
            cause="NCCL: connection closed by remote peer",
            severity="critical",
        ),
        alert("gloo_reset", 1, time=NOW - 10, cause="gloo: connection reset by peer"),
    ]
    finding = only(evaluate(dataclasses.replace(given(now=NOW), notes=notes)), "nccl_error")
    assert finding.severity == "critical" and finding.title == "A peer process died"
    assert finding.evidence == (
        "rank 0 (node-a) 20 s ago: NCCL: connection closed by remote peer; then rank 1"
    )
    assert finding.remedy is not None and "failed first" in finding.remedy.details


# DeepSpeed's fp16 loss scaler: https://github.com/microsoft/DeepSpeed/blob/master/deepspeed/runtime/fp16/loss_scaler.py
MIN_SCALE = "Current loss scale already at minimum - cannot decrease scale anymore. Exiting run."


def test_a_loss_scale_storm_that_ended_the_run() -> None:
    storm = alert("loss_scale_storm", 0, line=MIN_SCALE, severity="critical")
    inp = dataclasses.replace(given(now=NOW, running=False), notes=[storm])
    finding = only(evaluate(inp), "loss-scale-collapse")
    assert finding.severity == "critical" and repr(MIN_SCALE) in finding.evidence
    assert finding.remedy is not None and finding.remedy.kind == "lower-lr"


def test_a_failed_ranks_cause_when_no_rule_knows_it() -> None:
    cause = "FileNotFoundError: [Errno 2] No such file or directory: 'ds_config.json'"
    failed = EventNote(
        "rank_failed",
        2,
        "node-b",
        NOW - 5,
        f"rank 2 failed: {cause}",
        {"cause": cause, "reason": cause, "signature": "traceback"},
    )
    inp = dataclasses.replace(given(now=NOW, running=False), notes=[failed])
    finding = only(evaluate(inp), "rank_failed")
    assert finding.evidence == f"rank 2 (node-b) failed first, 5 s ago: {cause}"
    assert finding.remedy is not None and "--rank 2 --stderr" in finding.remedy.summary
    oom = dataclasses.replace(
        failed, details={"cause": "CUDA out of memory", "signature": "cuda_oom"}
    )
    assert {f.rule for f in evaluate(dataclasses.replace(inp, notes=[oom]))} == {"oom"}


# --- the console's input ----------------------------------------------------------------------


def _event(
    seq: int, kind: job_pb2.JobEventKind, attempt: int, rank: int, **details: str
) -> job_pb2.JobEvent:
    event = job_pb2.JobEvent(
        seq=seq,
        job_name="j",
        attempt=attempt,
        kind=kind,
        node=f"node-{'ab'[rank % 2]}",
        rank=rank,
        message=f"rank {rank}: {details.get('alert', '')}",
    )
    event.time.seconds = int(NOW) - 100 + seq
    event.details.update(details)
    return event


def test_the_console_input_carries_the_attempt_world_and_notes() -> None:
    job = job_pb2.Job(state=job_pb2.JOB_STATE_RUNNING)
    job.spec.name = "j"
    job.spec.args.extend(["--per_device_train_batch_size", "1", "--gradient_checkpointing"])
    for number, ranks in ((1, 4), (2, 3)):
        attempt = job.attempts.add(number=number)
        attempt.started.seconds = int(NOW) - (200 if number == 1 else 50)
        for r in range(ranks):
            attempt.ranks.add(rank=r, node=f"node-{'ab'[r % 2]}")
    jobs = JobsStore()
    jobs.apply_job("node-a", job)
    jobs.apply_events(
        [
            _event(1, EK.JOB_EVENT_KIND_ALERT, 1, 3, alert="cuda_oom", line="CUDA out of memory"),
            _event(2, EK.JOB_EVENT_KIND_ATTEMPT_FAILED, 1, 0),
            _event(3, EK.JOB_EVENT_KIND_NCCL, 2, 0, finding="ib_fallback", line=SOCKET),
        ]
    )
    view = jobs.get("j")
    assert view is not None
    inp = advisor_input(view, ClusterStore(), NOW)
    assert (inp.attempt, inp.world_size, inp.nodes) == (2, 3, frozenset({"node-a", "node-b"}))
    assert inp.attempt_started == NOW - 50 and inp.gradient_checkpointing
    assert [(n.kind, n.attempt) for n in inp.notes] == [("alert", 1), ("nccl", 2)]
    assert [f.attempt for f in inp.failures] == [1]
    # Attempt 1's OOM is not this attempt's; the socket fallback is.
    assert [a.rule for a in findings_for(view, ClusterStore(), NOW)] == ["ib_fallback"]
