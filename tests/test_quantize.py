"""agent.tasks.quantize: int8 with torchao for the Linears and agent.ml.int8_experts for the fused
MoE experts; the artifact agent.ml.loading loads back; the CLI's report."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from transformers.integrations.moe import use_experts_implementation

from agent.ml.int8_experts import Int8Experts, quantize_rows, unsupported_reason
from agent.ml.loading import MANIFEST, STATE_FILE, load_hf, load_model
from agent.rank import demo_data
from agent.tasks.quantize import float_3d_left, main, module_bytes, quantize_model
from tests.deepspeed_env import ROOT

pytestmark = pytest.mark.timeout(120)

# Fast CLI runs: a few tokens, one timed prompt, three held-out samples.
FAST = ["--gen-tokens", "3", "--latency-prompts", "1", "--max-new-tokens", "3"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # int8 matmuls on a busy 2-core machine stall in OpenMP barriers; one thread is steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny-moe and tiny-dense (seeded random weights) saved as HF directories, and a
    held-out file."""
    from agent.ml.data import train_tokenizer
    from agent.ml.models import build_model

    root = tmp_path_factory.mktemp("quantize")
    tok = train_tokenizer([" apple river stone", " stone river apple"] * 10, vocab_size=300)
    dirs: dict[str, Path] = {}
    for name in ("tiny-moe", "tiny-dense"):
        model = build_model(name, tok, seed=0)
        dirs[name] = root / name
        model.save_pretrained(str(dirs[name]))
        tok.save_pretrained(str(dirs[name]))
    _, heldout = demo_data.generate(0, 3, seed=1)
    dirs["heldout"] = root / "heldout.jsonl"
    demo_data.write_jsonl(dirs["heldout"], heldout)
    return dirs


def linear_names(model: nn.Module) -> set[str]:
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def is_int8_weight(module: nn.Module) -> bool:
    from torchao.quantization import Int8Tensor  # type: ignore[import-untyped]

    weight = getattr(module, "weight", None)
    return isinstance(weight, Int8Tensor) and weight.qdata.dtype == torch.int8


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any], str]:
    code = main(args)
    captured = capsys.readouterr()
    docs = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    return code, docs, captured.err


# --- the int8 experts -----------------------------------------------------------------


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def routing(tokens: int, experts: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 128, generator=g)
    index = torch.stack([torch.randperm(experts, generator=g)[:2] for _ in range(tokens)])
    weights = torch.rand(tokens, 2, generator=g).softmax(-1)
    return x, index, weights


@pytest.mark.parametrize("weight_only", [False, True])
def test_int8_experts_match_fp32_experts(weight_only: bool) -> None:
    from transformers import DeepseekV3Config, MixtralConfig
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Experts
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    mixtral = MixtralExperts(
        MixtralConfig(hidden_size=128, intermediate_size=64, num_local_experts=32)
    )
    deepseek = DeepseekV3Experts(  # type: ignore[no-untyped-call]
        DeepseekV3Config(hidden_size=128, moe_intermediate_size=64, n_routed_experts=32)
    )
    for fp32 in (mixtral, deepseek):
        torch.manual_seed(0)
        for p in fp32.parameters():
            nn.init.normal_(p, std=0.02)
        assert unsupported_reason(fp32) is None
        x, index, weights = routing(64, 32)
        with torch.no_grad():
            expected = fp32(x, index, weights)
            int8 = Int8Experts.from_float(fp32, weight_only=weight_only)
            got = int8(x, index, weights)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert relative_error(got, expected) < 0.04  # measured 0.011-0.017
        assert int8.gate_up_qweight.dtype == torch.int8 and int8.down_qweight.dtype == torch.int8
        assert module_bytes(fp32) / module_bytes(int8) > 3.5
        assert not [p for p in int8.parameters()]  # nothing left to train or cast by mistake


def test_int8_experts_follow_transposed_layout_with_bias() -> None:
    """A layout other than Mixtral's, against transformers' own batched implementation."""

    @use_experts_implementation(is_transposed=True, has_bias=True)
    class TransposedExperts(nn.Module):
        def __init__(self, config: Any) -> None:
            super().__init__()
            self.num_experts = 8
            self.gate_up_proj = nn.Parameter(torch.randn(8, 128, 2 * 32) * 0.05)
            self.gate_up_proj_bias = nn.Parameter(torch.randn(8, 2 * 32) * 0.05)
            self.down_proj = nn.Parameter(torch.randn(8, 32, 128) * 0.05)
            self.down_proj_bias = nn.Parameter(torch.randn(8, 128) * 0.05)
            self.act_fn = nn.SiLU()

        def forward(self, *args: Any) -> torch.Tensor:
            raise AssertionError("batched_mm is used")

    torch.manual_seed(0)
    fp32 = TransposedExperts(SimpleNamespace(_experts_implementation="batched_mm"))
    assert unsupported_reason(fp32) is None
    x, index, weights = routing(16, 8)
    with torch.no_grad():
        expected = fp32(x, index, weights)
        for weight_only in (False, True):
            got = Int8Experts.from_float(fp32, weight_only=weight_only)(x, index, weights)
            assert relative_error(got, expected) < 0.04


def test_unknown_fused_layouts_are_refused_with_a_reason() -> None:
    plain = nn.Module()
    plain.gate_up_proj = nn.Parameter(torch.zeros(4, 8, 16))
    plain.down_proj = nn.Parameter(torch.zeros(4, 16, 4))
    assert "experts-interface" in str(unsupported_reason(plain))
    with pytest.raises(ValueError, match="experts-interface"):
        Int8Experts.from_float(plain)
    odd = nn.Module()
    odd.w1 = nn.Parameter(torch.zeros(4, 8, 16))
    assert "gate_up_proj" in str(unsupported_reason(odd))


def test_quantize_rows_is_symmetric_per_row() -> None:
    w = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    q, scale = quantize_rows(w)
    assert q.tolist()[0] == [64, -127, 32] and q.tolist()[1] == [0, 0, 0]
    assert scale[0, 0] == pytest.approx(2.0 / 127) and scale[1, 0] > 0


# --- the whole model ------------------------------------------------------------------


def test_quantize_moe_model_in_place(saved: dict[str, Path]) -> None:
    model = load_hf(saved["tiny-moe"])
    linears = linear_names(model)
    size_before = module_bytes(model)
    with torch.no_grad():
        plan, done = quantize_model(model)

    experts = {"model.layers.0.mlp.experts", "model.layers.1.mlp.experts"}
    assert set(plan.experts) == experts
    assert set(plan.linears) == linears - {"lm_head"}
    assert {d["module"] for d in done} == (linears - {"lm_head"}) | experts
    for name in plan.linears:
        assert is_int8_weight(model.get_submodule(name)), name
    assert not is_int8_weight(model.get_submodule("lm_head"))
    for name in experts:
        assert isinstance(model.get_submodule(name), Int8Experts)
    assert float_3d_left(model) == []

    skipped = {s["module"]: s["reason"] for s in plan.skipped}
    assert "--include-lm-head" in skipped["lm_head"]
    assert "embedding" in skipped["model.embed_tokens"]
    assert "router" in skipped["model.layers.0.mlp.gate"]
    assert "normalization" in skipped["model.norm"]

    quantized_before = sum(d["bytes_before"] for d in done)
    quantized_after = sum(d["bytes_after"] for d in done)
    assert quantized_before / quantized_after > 3.5  # int8 + fp32 scales vs fp32
    assert size_before / module_bytes(model) > 2
    ids = torch.tensor([[5, 6, 7]])
    out = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False)  # type: ignore[operator]
    assert out.shape == (1, 6)


def test_cli_moe_artifact_report_and_reload(
    saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "moe-int8"
    heldout = ["--eval", str(saved["heldout"]), "--max-samples", "2"]
    code, docs, err = run_cli(
        ["--model", str(saved["tiny-moe"]), "--out", str(out), *heldout, *FAST], capsys
    )
    assert code == 0, err
    fractions = [d["progress"] for d in docs if "progress" in d]
    assert fractions == sorted(fractions) and fractions[0] == 0.0
    assert all(isinstance(d.get("message"), str) for d in docs if "progress" in d)
    done = docs[-1]
    assert done["done"] is True
    results = done["results"]
    assert all(isinstance(v, int | float) for v in results.values())
    assert results["size_before"] / results["size_after"] > 2
    assert results["quantized_ratio"] > 3.5
    assert results["disk_before"] / results["disk_after"] > 2
    assert results["experts_quantized"] == 2 and results["fp32_3d_tensors_left"] == 0
    assert results["latency_before_s"] > 0 and results["latency_after_s"] > 0
    for key in ("bleu4_before", "bleu4_after", "rouge_l_before", "rouge_l_after"):
        assert 0.0 <= results[key] <= 1.0

    report = json.loads((out / "quantize_report.json").read_text())
    assert report["results"] == results and done["report"] == report
    assert report["reload_identical"] is True
    assert report["eval"]["samples"] == 2
    quantized = {d["module"] for d in report["quantized"]}
    assert "model.layers.1.mlp.experts" in quantized and "lm_head" not in quantized
    assert "model.layers.0.self_attn.q_proj" in quantized
    reasons = {s["module"]: s["reason"] for s in report["not_quantized"]}
    assert {"lm_head", "model.embed_tokens", "model.layers.1.mlp.gate"} <= reasons.keys()

    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["weight_only"] is False
    assert manifest["experts"] == ["model.layers.0.mlp.experts", "model.layers.1.mlp.experts"]
    assert (out / STATE_FILE).is_file() and not list(out.glob("*.safetensors"))

    model, tok = load_model(out)
    assert isinstance(model.get_submodule("model.layers.1.mlp.experts"), Int8Experts)
    assert is_int8_weight(model.get_submodule("model.layers.0.self_attn.o_proj"))
    assert not model.training
    ids = tok("apple river", return_tensors="pt")["input_ids"]
    gen = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)  # type: ignore[operator]
    assert gen.shape[1] == ids.shape[1] + 4


def test_cli_dense_weight_only(
    saved: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dense-int8"
    code, docs, err = run_cli(
        ["--model", str(saved["tiny-dense"]), "--out", str(out), "--weight-only", *FAST], capsys
    )
    assert code == 0, err
    results = docs[-1]["results"]
    assert results["experts_quantized"] == 0 and results["size_before"] / results["size_after"] > 2
    assert "bleu4_before" not in results
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["weight_only"] is True and manifest["scheme"] == "int8-weight-only"

    model, _ = load_model(out)
    reference = load_hf(saved["tiny-dense"])
    linears = linear_names(reference) - {"lm_head"}
    assert len(linears) == 14  # q, k, v, o, gate, up, down x 2 layers
    for name in linears:
        module = model.get_submodule(name)
        assert is_int8_weight(module), name
        assert getattr(module.weight, "act_quant_kwargs", "?") is None, name
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        logits = model(ids).logits
        expected = reference(ids).logits
    assert relative_error(logits, expected) < 0.05

    # A second run over the same OUT replaces the artifact.
    code, _, err = run_cli(["--model", str(saved["tiny-dense"]), "--out", str(out), *FAST], capsys)
    assert code == 0, err
    assert json.loads((out / MANIFEST).read_text())["weight_only"] is False


def test_load_model_reads_plain_hf_directories(saved: dict[str, Path]) -> None:
    model, tok = load_model(saved["tiny-dense"])
    assert not is_int8_weight(model.get_submodule("model.layers.0.self_attn.q_proj"))
    assert len(tok) == model.config.vocab_size


# --- bad input ------------------------------------------------------------------------


def test_missing_model_dir_exits_2_with_one_line(tmp_path: Path) -> None:
    args = ["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]
    result = subprocess.run(
        [sys.executable, "-m", "agent.tasks.quantize", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--model" in result.stderr
    assert "no such directory" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "{empty}", "--out", "{tmp}/o"], "no config.json"),
        (["--model", "{moe}", "--out", "{moe}"], "another directory"),
        (["--model", "{moe}", "--out", "{busy}"], "not a quantized artifact"),
        (["--model", "{moe}", "--out", "{tmp}/o", "--max-samples", "3"], "needs --eval"),
        (["--model", "{moe}", "--out", "{tmp}/o", "--eval", "{tmp}/none.jsonl"], "no such file"),
        (["--model", "{moe}", "--out", "{tmp}/o", "--eval", "{bad}"], "no conversation"),
        (["--model", "{moe}", "--out", "{tmp}/o", "--gen-tokens", "0"], "at least 1"),
        (["--model", "{moe}"], "--out"),
    ],
)
def test_bad_input_exits_2_naming_the_fix(
    args: list[str],
    expected: str,
    saved: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    (tmp_path / "bad.jsonl").write_text('{"text": 3}\nnot json\n')
    names = {"tmp": tmp_path, "moe": saved["tiny-moe"], "empty": tmp_path / "empty"}
    names |= {"busy": tmp_path / "busy", "bad": tmp_path / "bad.jsonl"}
    code = main([a.format(**names) for a in args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and expected in err, err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_int8_products_stay_exact_where_the_cpus_int8_kernel_saturates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An AVX2-only CPU (no VNNI) sums u8 x s8 pairs in saturating int16: _int_mm is then
    wrong for large values, and Int8Experts multiplies the int8 values in fp32 instead."""
    import agent.ml.int8_experts as experts

    real = torch._int_mm

    def saturating(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return real(a, b).clamp(-(2**15), 2**15 - 1)  # as an int16 accumulator would

    monkeypatch.setattr(torch, "_int_mm", saturating)
    monkeypatch.setattr(experts, "_CPU_INT_MM_EXACT", None)
    assert not experts.cpu_int_mm_exact()
    a = torch.full((4, 64), 127, dtype=torch.int8)
    b = torch.full((64, 4), 127, dtype=torch.int8)
    assert int(experts.int8_matmul(a, b)[0, 0]) == 64 * 127 * 127
    monkeypatch.setattr(torch, "_int_mm", real)
    monkeypatch.setattr(experts, "_CPU_INT_MM_EXACT", None)
    assert experts.cpu_int_mm_exact() == torch.equal(
        real(a, b), torch.matmul(a.float(), b.float()).to(torch.int32)
    )
