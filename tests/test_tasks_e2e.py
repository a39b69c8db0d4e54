"""Eval, quantize and serve as tasks of a real agent, driven by the CLI verbs: a tiny
random model (no training: the figures are not the point), its held-out file, and the
served int8 artifact answering a gRPC request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from gantry.v1 import inference_service_pb2, inference_service_pb2_grpc, task_pb2

from console.net.cluster_file import dump_cluster_file
from tests.conftest import StartAgent
from tests.test_cli import run_cli as cli


def tiny_model(root: Path) -> tuple[Path, Path]:
    from agent.ml.data import train_tokenizer
    from agent.ml.models import build_model
    from agent.rank.demo_data import generate, write_jsonl

    train, heldout = generate(40, 3, seed=3, bad_records=False)
    tokenizer = train_tokenizer((" " + t for r in train for t in r["text"]), vocab_size=300)
    model = build_model("tiny-dense", tokenizer, seed=0)
    model.save_pretrained(str(root / "model"))
    tokenizer.save_pretrained(str(root / "model"))
    write_jsonl(root / "heldout.jsonl", heldout)
    return root / "model", root / "heldout.jsonl"


def test_eval_quantize_serve_through_an_agent(
    local_agents: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = local_agents("node-a")
    cluster = tmp_path / "cluster.yaml"
    dump_cluster_file(cluster, [agent.target])
    model, heldout = tiny_model(tmp_path)
    capsys.readouterr()  # building the model logs; the verbs' own output comes next
    c = ["--cluster", str(cluster)]

    code, out, err = cli(["eval", "--model", str(model), "--data", "/nope.jsonl", *c], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    code, out, err = cli(["quantize", str(tmp_path / "nope"), "--int8", *c], capsys)
    assert code == 2 and "no config.json" in err

    code, out, err = cli(
        ["eval", "--model", str(model), "--data", str(heldout), "--max-samples", "3", "--json", *c],
        capsys,
    )
    assert code in (0, 1), err  # 1: a random model misses its targets
    report = json.loads(out)
    task = report["task"]
    assert task["state"] == "TASK_STATE_SUCCEEDED" and task["node"] == "node-a"
    assert set(report["report"]["targets"]) >= {"bleu4", "rouge_l"}
    assert 0 <= task["results"]["bleu4"] <= 1 and task["results"]["samples"] == 3

    quantized = tmp_path / "model-int8"
    code, out, err = cli(
        ["quantize", str(model), "--int8", "--out", str(quantized), "--json", *c], capsys
    )
    assert code == 0, err
    results = json.loads(out)["task"]["results"]
    assert results["size_after"] < results["size_before"]
    assert (quantized / "gantry_quant.json").is_file()

    code, out, err = cli(["serve", str(quantized), "--json", *c], capsys)
    assert code == 0, err
    served = json.loads(out)["task"]
    assert served["state"] == "TASK_STATE_RUNNING" and served["endpoint"].startswith("127.0.0.1:")
    with grpc.insecure_channel(served["endpoint"]) as channel:
        stub = inference_service_pb2_grpc.InferenceServiceStub(channel)
        request = inference_service_pb2.CompleteRequest(prompt="apple river stone")
        request.params.max_tokens = 4
        # The server answers only the agent's token.
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.Complete(request, timeout=60)
        assert anonymous.value.code() is grpc.StatusCode.UNAUTHENTICATED
        bearer = (("authorization", f"Bearer {agent.target.read_token()}"),)
        reply = stub.Complete(request, metadata=bearer, timeout=60)
    assert reply.usage.completion_tokens == 4 and len(reply.token_ids) == 4

    code, out, _ = cli(["tasks", "--json", *c], capsys)
    kinds = [t["task"]["kind"] for t in json.loads(out)["tasks"]]
    assert kinds == ["TASK_KIND_EVAL", "TASK_KIND_QUANTIZE", "TASK_KIND_SERVE"]
    code, out, err = cli(["stop-task", served["id"], "--json", *c], capsys)
    assert code == 0, err
    assert json.loads(out)["task"]["state"] == "TASK_STATE_STOPPED"


async def test_demo_pipeline_evaluates_quantizes_and_serves_a_finished_job(
    local_agents: StartAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from console.model.job_spec import load_job_spec
    from console.net.jobs_client import JobsClient
    from console.net.tasks_client import TasksClient
    from console.verbs import demo_pipeline
    from console.verbs.demo_pipeline import run_pipeline
    from tests.test_jobs_e2e import write_job

    # The pipeline looks at the job and at each task every POLL_S (2 s, for a person
    # watching); the test need not wait up to that long after each of the four.
    monkeypatch.setattr(demo_pipeline, "POLL_S", 0.2)

    agents = [local_agents("node-a"), local_agents("node-b")]
    targets = [a.target for a in agents]
    out = tmp_path / "out"
    out.mkdir()
    model, heldout = tiny_model(tmp_path)
    model.rename(out / "final")  # what agent.train leaves: OUTPUT_DIR/final
    data = tmp_path / "train.jsonl"  # heldout.jsonl lies beside it
    spec = write_job(
        tmp_path,
        "pipe-job",
        ["--steps", "3", "--output_dir", str(out), "--data", str(data)],
    )
    await JobsClient(targets).launch(load_job_spec(spec))
    said: list[str] = []
    result = await asyncio.wait_for(run_pipeline(targets, "pipe-job", said.append), 240)
    assert result.stopped_at == ""
    assert result.eval_task is not None and result.quantize_task is not None
    assert result.eval_task.task.state == task_pb2.TaskState.TASK_STATE_SUCCEEDED
    assert result.eval_task.task.eval.data_path == str(heldout)
    assert result.eval_task.node.name == "node-a"  # the job's leader
    assert (out / "final-int8" / "gantry_quant.json").is_file()
    quantized = result.quantize_task.task.results
    assert {"bleu4_before", "bleu4_after", "rouge_l_before", "rouge_l_after"} <= set(quantized)
    assert result.serve_task is not None and result.serve_task.task.endpoint
    assert said[0] == f"pipe-job trained: evaluating {out / 'final'}"
    assert said[-1] == f"serving on {result.serve_task.task.endpoint}"
    await TasksClient(targets).stop(result.serve_task.task.id, 10)
