"""The load tester against the real inference server (agent.serve's main, a tiny random
model, bearer token, reflection): the Gantry endpoint's stream and a reflected unary method.

One child process builds the model and then serves it, so torch is imported once and never
in the test process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from console.loadtest.config import LoadTestConfig
from console.loadtest.runner import run_loadtest
from tests.deepspeed_env import ROOT, base_env

START_TIMEOUT_S = 180.0
TOKEN = "loadtest-e2e-token-0123456789"
LINES = [" apple river stone", " stone river apple", " the quick brown fox", " fox river stone"]
PROMPTS = ["apple river", "stone", "the quick brown fox jumps", "river fox apple stone"]
BUILD_THEN_SERVE = """
import json, sys
from agent.ml.data import train_tokenizer
from agent.ml.models import build_model
from agent.serve.main import main

model, lines = sys.argv[1], json.loads(sys.argv[2])
tok = train_tokenizer(lines * 10, vocab_size=300)
build_model("tiny-dense", tok, seed=0).save_pretrained(model)
tok.save_pretrained(model)
main(sys.argv[3:])
"""


@dataclass
class Server:
    address: str
    token_file: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("loadtest-e2e")
    token_file = base / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    ready = base / "ready.json"
    argv = [sys.executable, "-c", BUILD_THEN_SERVE, str(base / "model"), json.dumps(LINES)]
    argv += ["--model", str(base / "model"), "--listen", "127.0.0.1:0", "--device", "cpu"]
    argv += ["--ready-file", str(ready), "--token-file", str(token_file)]
    argv += ["--max-batch-size", "4"]
    with (base / "stderr.log").open("wb") as err:
        env = {**base_env(), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready.is_file():
            log = (base / "stderr.log").read_text(errors="replace")[-3000:]
            assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log}"
            assert time.monotonic() < deadline, f"the server did not get ready:\n{log}"
            time.sleep(0.1)
        yield Server(json.loads(ready.read_text())["address"], token_file)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_the_real_endpoint_streams_tokens_under_load(server: Server, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    report = await run_loadtest(
        LoadTestConfig(
            server.address,
            prompts=prompts,
            max_tokens=4,
            concurrency=2,
            requests=6,
            token_file=server.token_file,
            slo_ttft_ms=60_000,
        )
    )
    assert report.kind == "gantry" and report.streaming
    assert report.ok == 6 and not report.errors and report.good == 6
    assert report.ttft_ms is not None and report.ttft_ms.count == 6
    assert 6 <= report.tokens <= 24
    assert 0 < report.ttft_ms.p50 <= report.latency_ms.p50
    unary = await run_loadtest(
        LoadTestConfig(
            server.address,
            method="gantry.v1.InferenceService/Complete",
            data=json.dumps({"prompt": "apple river", "params": {"max_tokens": 2}}),
            concurrency=1,
            requests=3,
            token_file=server.token_file,
        )
    )
    assert unary.kind == "grpc" and not unary.streaming and unary.ok == 3
