"""Issue 18, the inference contract for clients in other languages: a Node client built from
the .proto files alone (tests/clients/node/client.mjs, @grpc/grpc-js + @grpc/proto-loader)
calls every RPC with the documented auth against a real `python -m agent.serve` on
127.0.0.1 port 0.

Its node_modules are installed in set-up (`npm ci --prefix tests/clients/node`, by
`make pytest`), never here; without node or them the test fails saying what to run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.deepspeed_env import ROOT
from tests.test_serve import Served, launch, model_dir, stop_server

__all__ = ["model_dir"]  # tests.test_serve's module fixture, shared

CLIENT_DIR = ROOT / "tests" / "clients" / "node"
CLIENT_TIMEOUT_S = 120


def node_or_fail() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not installed: this test runs a Node client of the inference contract; "
            "install Node.js 18 or later (apt-get install nodejs npm), then "
            "`npm ci --prefix tests/clients/node`"
        )
    if not (CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(
            "the Node client's packages are not installed: run "
            "`npm ci --prefix tests/clients/node` (make pytest does)"
        )
    return node


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = launch(model_dir, tmp_path_factory.mktemp("contract-server"), [])
    try:
        yield served.wait_ready()
    finally:
        stop_server(served)


def run_client(node: str, server: Served) -> dict[str, Any]:
    argv = [node, "client.mjs", "--address", server.address]
    argv += ["--token-file", str(server.base / "token"), "--protos", str(ROOT / "protos")]
    done = subprocess.run(
        argv, cwd=CLIENT_DIR, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S
    )
    assert done.returncode == 0, f"node client failed:\n{done.stderr}\nserver:\n{server.logs()}"
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def test_a_node_client_from_the_protos_alone_calls_every_rpc(
    server: Served, model_dir: Path
) -> None:
    node = node_or_fail()
    report = run_client(node, server)

    assert report["health"] == "SERVING"  # no token needed

    generated = report["generate"]
    assert generated["code"] == "OK"
    assert generated["done"][-1] is True and not any(generated["done"][:-1])
    usage = generated["usage"]
    assert usage["completion_tokens"] == len(generated["token_ids"]) > 0
    assert usage["finish_reason"] in ("FINISH_REASON_LENGTH", "FINISH_REASON_EOS")
    assert usage["prompt_tokens"] > 0 and usage["time_to_first_token_ms"] > 0

    complete = report["complete"]  # greedy: the same reply, whole
    assert complete["token_ids"] == generated["token_ids"]
    assert complete["text"] == generated["text"]
    assert complete["usage"]["finish_reason"] == usage["finish_reason"]

    # The model's name, never the server's path to it (here tmp/serveN/final).
    assert report["stats"] == {"model": model_dir.parent.name, "max_batch_size": 8}

    assert report["cancel"]["code"] == "CANCELLED"
    assert report["cancel"]["messages"] >= 2 and report["cancel"]["running_after"] == 0
    assert report["deadline"]["code"] == "DEADLINE_EXCEEDED"
    assert report["deadline"]["running_after"] == 0

    assert report["no_token"]["code"] == "UNAUTHENTICATED"
    assert report["lowercase_bearer"]["code"] == "UNAUTHENTICATED"  # "Bearer" as documented
    assert report["max_tokens_unset"] == {
        "code": "INVALID_ARGUMENT",
        "details": "params.max_tokens is required: between 1 and 1024",
    }
    assert report["undecodable"] == {
        "code": "INVALID_ARGUMENT",
        "details": "request: not a gantry.v1.CompleteRequest",
    }
