"""The inference server: the batched decoder against `generate`; `python -m agent.serve` as
a subprocess on 127.0.0.1 port 0 (its pure parts: tests/test_serve_parts.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from gantry.v1 import inference_service_pb2 as pb
from gantry.v1 import inference_service_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent.serve.main import SERVICE
from tests.deepspeed_env import ROOT, base_env

START_TIMEOUT_S = 90.0
LINES = [" apple river stone", " stone river apple", " the quick brown fox", " fox river stone"]
PROMPTS = ["apple river", "stone", "the quick brown fox jumps", "river fox apple stone"]

# --- a tiny model and a server on it -------------------------------------------------------
#
# The server starts as soon as the model directory exists, so that its imports and
# loading overlap with this process loading its reference model.


@dataclass
class TinyModel:
    dir: Path
    model: Any
    tokenizer: Any

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def greedy(self, prompt: str, max_new_tokens: int) -> list[int]:
        import torch

        ids = torch.tensor([self.encode(prompt)])
        out = self.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False
        )
        return [int(t) for t in out[0, ids.shape[1] :]]

    def text(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    base: Path
    token: str
    address: str = ""
    first_health: int = -1  # health as soon as it listens (the watcher notes it)
    watcher: threading.Thread | None = None

    @property
    def ready_file(self) -> Path:
        return self.base / "ready.json"

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def metadata(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.token}"),)

    def kw(self, timeout: float = 30) -> dict[str, Any]:
        return {"metadata": self.metadata(), "timeout": timeout}

    def logs(self) -> str:
        return (self.base / "stderr.log").read_text(errors="replace")[-4000:]

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited ({self.proc.returncode}) {what}:\n{self.logs()}"
                )
            time.sleep(0.02)
        raise AssertionError(f"timed out {what}\n{self.logs()}")

    def wait_ready(self) -> Served:
        self.wait_until(self.ready_file.is_file, START_TIMEOUT_S, "for the ready file")
        return self


def health_status(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    return int(response.status)


def launch(model_dir: Path, base: Path, extra: list[str]) -> Served:
    """Starts a server; a thread notes its health as soon as it prints its address."""
    base.mkdir(parents=True, exist_ok=True)
    token = "serve-test-token-0123456789"
    token_file = base / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    out = base / "stdout.log"
    argv = [sys.executable, "-m", "agent.serve", "--model", str(model_dir)]
    argv += ["--listen", "127.0.0.1:0", "--ready-file", str(base / "ready.json")]
    argv += ["--token-file", str(token_file), "--device", "cpu", *extra]
    with out.open("wb") as o, (base / "stderr.log").open("wb") as e:
        # One intra-op thread: the tiny model gains nothing from more, and on a small
        # machine the server's and this process's thread pools would spin against each other.
        env = {**base_env(), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=o, stderr=e)
    served = Served(proc, base, token)

    def listening() -> bool:
        lines = out.read_text().splitlines()
        served.address = json.loads(lines[0])["address"] if lines else ""
        return bool(served.address)

    def note_health() -> None:
        with contextlib.suppress(AssertionError):
            served.wait_until(listening, START_TIMEOUT_S, "for the address line")
            with served.channel() as channel:
                served.first_health = health_status(channel)

    served.watcher = threading.Thread(target=note_health, daemon=True)
    served.watcher.start()
    return served


def stop_server(served: Served) -> None:
    if served.proc.poll() is None:
        served.proc.kill()
    served.proc.wait(10)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agent.ml.data import train_tokenizer
    from agent.ml.models import build_model

    tok = train_tokenizer(LINES * 10, vocab_size=300)
    path = tmp_path_factory.mktemp("serve") / "final"
    build_model("tiny-dense", tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def launched(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    extra = ["--max-batch-size", "4", "--max-queue-delay-ms", "50"]
    served = launch(model_dir, tmp_path_factory.mktemp("server"), extra)
    yield served
    stop_server(served)


@pytest.fixture(scope="module")
def tiny(model_dir: Path, launched: Served) -> Iterator[TinyModel]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the server (see launch)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    yield TinyModel(model_dir, model.eval(), AutoTokenizer.from_pretrained(model_dir))
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("weights", "prompts", "n"), [("fp32", 4, 12), ("int8", 2, 8)])
def test_batched_decoding_equals_generate(
    tiny: TinyModel, weights: str, prompts: int, n: int
) -> None:
    """Requests joining and leaving a running batch each get `generate`'s greedy tokens,
    with the trained weights and with agent.tasks.quantize's int8 ones."""
    import copy

    from agent.serve.decode import BatchDecoder
    from agent.serve.sampling import GREEDY, choose_tokens

    if weights == "int8":
        from agent.tasks.quantize import quantize_model

        tiny = TinyModel(tiny.dir, copy.deepcopy(tiny.model), tiny.tokenizer)
        quantize_model(tiny.model)
    want = {i: tiny.greedy(p, n) for i, p in enumerate(PROMPTS[:prompts])}
    decoder: BatchDecoder[int] = BatchDecoder(tiny.model)
    got: dict[int, list[int]] = {i: [] for i in want}
    waiting = list(want)
    while waiting or len(decoder):
        if waiting:  # one joins per step
            i = waiting.pop(0)
            logits, prefilled = decoder.prefill(tiny.encode(PROMPTS[i]))
            got[i] += choose_tokens(logits, [GREEDY])
            decoder.join(i, prefilled)
        keys = decoder.keys
        logits = decoder.step({i: got[i][-1] for i in keys})
        for i, token in zip(keys, choose_tokens(logits, [GREEDY] * len(keys)), strict=True):
            got[i].append(token)
        # Request 1 leaves early, shrinking the batch under the others.
        decoder.drop([i for i in decoder.keys if len(got[i]) >= (5 if i == 1 else n)])
    assert got[1] == want[1][:5]
    assert all(got[i] == want[i][: len(got[i])] for i in want)
    assert all(len(got[i]) == n for i in want if i != 1)


def test_requests_prefilled_together_decode_as_generate(tiny: TinyModel) -> None:
    """Prompts of different lengths prefilled in one padded forward, then decoded in one
    batch, each get `generate`'s greedy tokens."""
    from agent.serve.decode import BatchDecoder
    from agent.serve.sampling import GREEDY, choose_tokens

    n = 10
    want = {i: tiny.greedy(p, n) for i, p in enumerate(PROMPTS)}
    assert len({len(tiny.encode(p)) for p in PROMPTS}) > 1  # padding is exercised
    decoder: BatchDecoder[int] = BatchDecoder(tiny.model)
    got: dict[int, list[int]] = {}
    prefills = decoder.prefill_many([tiny.encode(p) for p in PROMPTS])
    for i, (logits, prefilled) in enumerate(prefills):
        alone, _ = decoder.prefill(tiny.encode(PROMPTS[i]))
        assert torch_allclose(logits, alone)
        assert prefilled.length == len(tiny.encode(PROMPTS[i]))
        got[i] = choose_tokens(logits, [GREEDY])
        decoder.join(i, prefilled)
    while len(got[0]) < n:
        keys = decoder.keys
        logits = decoder.step({i: got[i][-1] for i in keys})
        for i, token in zip(keys, choose_tokens(logits, [GREEDY] * len(keys)), strict=True):
            got[i].append(token)
    assert got == want


def torch_allclose(a: Any, b: Any) -> bool:
    import torch

    return bool(torch.allclose(a, b, atol=1e-4, rtol=1e-4))


# --- the server as a subprocess ------------------------------------------------------------


@pytest.fixture(scope="module")
def server(launched: Served) -> Served:
    return launched.wait_ready()


@pytest.fixture
def stub(server: Served) -> Iterator[Any]:
    with server.channel() as channel:
        yield inference_service_pb2_grpc.InferenceServiceStub(channel)


def stats(stub: Any, server: Served) -> pb.GetServerStatsResponse:
    response: pb.GetServerStatsResponse = stub.GetServerStats(
        pb.GetServerStatsRequest(), metadata=server.metadata(), timeout=5
    )
    return response


def test_health_reflection_ready_file_and_auth(server: Served, stub: Any) -> None:
    assert server.watcher is not None
    server.watcher.join(5)
    assert server.first_health == health_pb2.HealthCheckResponse.NOT_SERVING  # while loading
    with server.channel() as channel:
        assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING  # no token
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = reflect.ServerReflectionInfo(iter([request]), metadata=server.metadata())
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names
    ready = json.loads(server.ready_file.read_text())
    assert ready == {"address": server.address, "pid": server.proc.pid}
    lines = [json.loads(line) for line in (server.base / "stdout.log").read_text().splitlines()]
    assert [line["address"] for line in lines] == [server.address] * 2  # loading, serving
    with pytest.raises(grpc.RpcError) as err:
        stub.GetServerStats(pb.GetServerStatsRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_generate_streams_what_complete_and_generate_give(
    server: Served, stub: Any, tiny: TinyModel
) -> None:
    prompt, n = PROMPTS[2], 16
    want = tiny.greedy(prompt, n)
    params = pb.SamplingParams(max_tokens=n)
    messages = list(
        stub.Generate(
            pb.GenerateRequest(prompt=prompt, params=params),
            metadata=server.metadata(),
            timeout=30,
        )
    )
    assert [m.done for m in messages] == [False] * (len(messages) - 1) + [True]
    # A message carries the tokens decoded since the previous one: one each while the
    # server's loop keeps up (agent.serve.rpc.caught_up), never none, text and ids together.
    assert all(len(m.token_ids) >= 1 for m in messages[:-1])
    assert len(messages) <= n
    streamed_ids = [i for m in messages for i in m.token_ids]
    streamed = "".join(m.text for m in messages)
    complete = stub.Complete(
        pb.CompleteRequest(prompt=prompt, params=params), metadata=server.metadata(), timeout=30
    )
    assert streamed_ids == list(complete.token_ids) == want
    assert streamed == complete.text == tiny.text(want)
    usage = messages[-1].usage
    assert usage.prompt_tokens == len(tiny.encode(prompt)) == complete.usage.prompt_tokens
    assert usage.completion_tokens == len(want)
    assert usage.finish_reason == (
        pb.FINISH_REASON_EOS if len(want) < n else pb.FINISH_REASON_LENGTH
    )
    assert 0 < usage.time_to_first_token_ms <= usage.total_time_ms


def test_concurrent_requests_share_decode_steps(server: Served, stub: Any, tiny: TinyModel) -> None:
    n = 12
    futures = [
        stub.Complete.future(
            pb.CompleteRequest(prompt=p, params=pb.SamplingParams(max_tokens=n)),
            metadata=server.metadata(),
            timeout=30,
        )
        for p in PROMPTS
    ]
    results = [f.result() for f in futures]
    assert [list(r.token_ids) for r in results] == [tiny.greedy(p, n) for p in PROMPTS]
    after = stats(stub, server)
    assert max(after.batch_size_histogram) > 1
    assert max(after.batch_size_histogram) <= after.max_batch_size == 4
    assert after.tokens_per_s > 0 and after.requests_per_s > 0
    assert after.queue_depth == 0 and after.running == 0


def test_a_repeated_prompt_start_is_served_from_the_prefix_cache(
    server: Served, stub: Any, tiny: TinyModel
) -> None:
    """Beside a running request, a prompt whose start an earlier prompt had is run from
    the server's prefix cache (on by default): the same reply, and its usage says how many
    prompt tokens were found."""
    running = stub.Generate(
        pb.GenerateRequest(
            prompt=PROMPTS[1], params=pb.SamplingParams(max_tokens=900, ignore_eos=True)
        ),
        **server.kw(),
    )
    next(running)  # in the batch: the prompts below join its steps
    prompt = " ".join(PROMPTS * 3)
    params = pb.SamplingParams(max_tokens=6)
    before = stats(stub, server)
    replies = [
        stub.Complete(pb.CompleteRequest(prompt=prompt, params=params), **server.kw())
        for _ in range(2)
    ]
    running.cancel()
    after = stats(stub, server)
    assert [list(r.token_ids) for r in replies] == [tiny.greedy(prompt, 6)] * 2
    length = len(tiny.encode(prompt))
    assert replies[0].usage.cached_prompt_tokens == 0
    assert replies[1].usage.cached_prompt_tokens == (length - 1) // 8 * 8 > 0
    assert replies[1].usage.prompt_tokens == length
    # GetServerStats sums them: the cache's hit rate
    assert after.prompt_tokens_total - before.prompt_tokens_total == 2 * length
    found = after.cached_prompt_tokens_total - before.cached_prompt_tokens_total
    assert found == replies[1].usage.cached_prompt_tokens


def test_stop_strings_and_seeded_sampling(server: Served, stub: Any, tiny: TinyModel) -> None:
    prompt = PROMPTS[0]
    full = tiny.text(tiny.greedy(prompt, 16))
    at = next(i for i in range(2, len(full) - 1) if "\ufffd" not in full[i : i + 2])
    stop = full[at : at + 2]
    params = pb.SamplingParams(max_tokens=16, stop=[stop, "never-seen"])
    cut = stub.Complete(pb.CompleteRequest(prompt=prompt, params=params), **server.kw())
    assert cut.text == full[: full.index(stop)]
    assert cut.usage.finish_reason == pb.FINISH_REASON_STOP
    sampled = pb.SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=7)
    twice = [
        stub.Complete.future(pb.CompleteRequest(prompt=prompt, params=sampled), **server.kw())
        for _ in range(2)
    ]
    first, second = (list(f.result().token_ids) for f in twice)
    assert first == second and len(first) == 8  # one seed, one sample, batched or not
    # top_k 1 at any temperature keeps only the most likely token: the greedy reply.
    hot = pb.SamplingParams(max_tokens=8, temperature=5.0, top_k=1, seed=3)
    kept = stub.Complete(pb.CompleteRequest(prompt=prompt, params=hot), **server.kw())
    assert list(kept.token_ids) == tiny.greedy(prompt, 8)


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ("", pb.SamplingParams(max_tokens=4), "prompt is empty"),
        ("apple", pb.SamplingParams(max_tokens=0), "max_tokens"),
        ("apple", pb.SamplingParams(max_tokens=5000), "above the limit"),
        ("apple", pb.SamplingParams(max_tokens=4, temperature=-1), "temperature"),
        ("apple " * 1100, pb.SamplingParams(max_tokens=4), "context is 1024"),
    ],
)
def test_invalid_requests(
    server: Served, stub: Any, prompt: str, params: pb.SamplingParams, message: str
) -> None:
    before = stats(stub, server).errors_total
    kw = server.kw()
    for call in (
        lambda: list(stub.Generate(pb.GenerateRequest(prompt=prompt, params=params), **kw)),
        lambda: stub.Complete(pb.CompleteRequest(prompt=prompt, params=params), **kw),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in str(err.value.details())
    assert stats(stub, server).errors_total == before + 2


def test_a_cancelled_stream_frees_its_place(server: Served, stub: Any) -> None:
    call = stub.Generate(
        pb.GenerateRequest(prompt=PROMPTS[0], params=pb.SamplingParams(max_tokens=1000)),
        **server.kw(),
    )
    next(call)
    next(call)
    assert stats(stub, server).running == 1
    call.cancel()
    server.wait_until(lambda: stats(stub, server).running == 0, 5, "for the place to be freed")
    # A deadline ends a request the same way.
    with pytest.raises(grpc.RpcError) as err:
        stub.Complete(
            pb.CompleteRequest(prompt=PROMPTS[1], params=pb.SamplingParams(max_tokens=1000)),
            metadata=server.metadata(),
            timeout=0.3,
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    server.wait_until(lambda: stats(stub, server).running == 0, 5, "for the deadline to free it")


def test_sigterm_drains_the_request_in_flight_then_exits_0(server: Served) -> None:
    """Last: it ends the module's server."""
    served = server
    with served.channel() as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        call = stub.Generate(
            pb.GenerateRequest(prompt=PROMPTS[0], params=pb.SamplingParams(max_tokens=150)),
            **served.kw(60),
        )
        messages = [next(call)]
        collector = threading.Thread(target=lambda: messages.extend(call))
        collector.start()
        os.kill(served.proc.pid, signal.SIGTERM)
        served.wait_until(
            lambda: health_status(channel) != health_pb2.HealthCheckResponse.SERVING,
            10,
            "for health to leave SERVING",
        )
        with pytest.raises(grpc.RpcError) as err:
            stub.Complete(
                pb.CompleteRequest(prompt="apple", params=pb.SamplingParams(max_tokens=2)),
                **served.kw(10),
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        collector.join(60)
    assert messages[-1].done and messages[-1].usage.finish_reason in (
        pb.FINISH_REASON_LENGTH,
        pb.FINISH_REASON_EOS,
    )
    assert sum(len(m.token_ids) for m in messages) == messages[-1].usage.completion_tokens
    assert served.proc.wait(30) == 0, served.logs()
    assert not served.ready_file.exists()
