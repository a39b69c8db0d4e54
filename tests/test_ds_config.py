"""agent.rank.ds_config: adapting a DeepSpeed config to the hardware (pure)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.rank import ds_config
from agent.rank.ds_config import (
    BF16_ENV,
    Hardware,
    adapt_config,
    cpu_bf16_override,
    detect_hardware,
    load_config,
    summary,
)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "examples" / "ds_config_zero3.json"

CPU = Hardware(accelerator="cpu", fp16=False, bf16=True, bf16_native=False)
CPU_AMX = Hardware(accelerator="cpu", fp16=False, bf16=True, bf16_native=True)
GPU = Hardware(accelerator="cuda", fp16=True, bf16=True, bf16_native=True)


@pytest.fixture
def reference() -> dict[str, Any]:
    return load_config(REFERENCE)


def test_reference_config_is_the_documented_one(reference: dict[str, Any]) -> None:
    assert reference["zero_optimization"]["stage"] == 3
    assert reference["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert reference["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert reference["fp16"]["enabled"] is True
    assert reference["train_micro_batch_size_per_gpu"] == 4
    assert reference["gradient_accumulation_steps"] == 4
    assert reference["steps_per_print"] == 10


def test_reference_on_this_cpu(reference: dict[str, Any]) -> None:
    before = copy.deepcopy(reference)
    out = adapt_config(reference, CPU, world_size=2)
    assert reference == before  # pure: the input is untouched
    cfg = out.config
    assert "fp16" not in cfg and "bf16" not in cfg  # fp32
    assert "optimizer" not in cfg and "scheduler" not in cfg
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3  # ZeRO-3 kept
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert cfg["comms_logger"] == {"enabled": True, "verbose": False, "prof_all": True}
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 4
    assert cfg["steps_per_print"] == 10
    assert out.optimizer_params == reference["optimizer"]["params"]
    # one line per change, each naming what changed
    assert len(out.changes) == 6
    joined = "\n".join(out.changes)
    for word in ("fp16", "optimizer", "scheduler", "offload_optimizer", "offload_param"):
        assert word in joined
    assert out.changes[0].startswith("fp16 is not supported on the cpu accelerator")
    assert summary(cfg) == "ZeRO stage 3, fp32, micro batch 4, accumulation 4"


def test_fp16_becomes_bf16_where_bf16_is_native(reference: dict[str, Any]) -> None:
    out = adapt_config(reference, CPU_AMX, world_size=1)
    assert "fp16" not in out.config and out.config["bf16"] == {"enabled": True}
    assert "fp16 is not supported on the cpu accelerator; using bf16" in out.changes


def test_gpu_keeps_fp16_and_offload(reference: dict[str, Any]) -> None:
    out = adapt_config(reference, GPU, world_size=8)
    cfg = out.config
    assert cfg["fp16"]["enabled"] is True
    assert cfg["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert cfg["zero_optimization"]["offload_param"]["device"] == "cpu"
    # the client torch AdamW with an offloaded optimizer needs DeepSpeed's consent
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    assert "optimizer" not in cfg
    assert not any(c.startswith("fp16") for c in out.changes)


def test_command_line_overrides_batch(reference: dict[str, Any]) -> None:
    out = adapt_config(reference, CPU, world_size=2, micro_batch=16, grad_accum=1)
    assert out.config["train_micro_batch_size_per_gpu"] == 16
    assert out.config["gradient_accumulation_steps"] == 1
    assert any("--per_device_train_batch_size" in c for c in out.changes)
    assert any("--gradient_accumulation_steps" in c for c in out.changes)
    same = adapt_config(reference, CPU, world_size=2, micro_batch=4, grad_accum=4)
    assert not any("--per_device" in c or "--gradient_acc" in c for c in same.changes)


def test_inconsistent_train_batch_size_removed() -> None:
    cfg = {"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4}
    out = adapt_config(cfg, CPU, world_size=2, grad_accum=4)
    assert out.config["train_batch_size"] == 32  # 4 x 4 x 2 agrees
    out = adapt_config(cfg, CPU, world_size=4, grad_accum=4)
    assert "train_batch_size" not in out.config
    assert any("train_batch_size" in c for c in out.changes)


def test_auto_values_resolved() -> None:
    cfg = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": 0.1}},
        "zero_optimization": {
            "stage": 3,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "sub_group_size": "auto",
        },
    }
    out = adapt_config(cfg, CPU, world_size=2, micro_batch=8, hidden_size=64)
    c = out.config
    assert "train_batch_size" not in c
    assert c["train_micro_batch_size_per_gpu"] == 8 and c["gradient_accumulation_steps"] == 1
    assert c["gradient_clipping"] == 1.0
    assert c["fp16"]["enabled"] is False and c["bf16"]["enabled"] is False  # fp32 here
    assert out.optimizer_params == {"weight_decay": 0.1}
    z = c["zero_optimization"]
    assert z["reduce_bucket_size"] == 4096
    assert z["stage3_prefetch_bucket_size"] == 3686
    assert z["stage3_param_persistence_threshold"] == 640
    assert "sub_group_size" not in z
    assert "auto" not in json.dumps(c)
    gpu = adapt_config(cfg, GPU, world_size=2).config
    assert gpu["bf16"]["enabled"] is True and gpu["fp16"]["enabled"] is False


def test_explicit_comms_logger_and_plain_config_untouched() -> None:
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "comms_logger": {"enabled": False},
        "zero_optimization": {"stage": 2},
    }
    out = adapt_config(cfg, CPU, world_size=2)
    assert out.config == cfg and out.changes == []


def test_bf16_kept_on_cpu_without_native_support() -> None:
    # bf16 is slower without native support, but it works: the user asked for it
    out = adapt_config({"bf16": {"enabled": True}}, CPU, world_size=1)
    assert out.config["bf16"] == {"enabled": True}
    no_bf16 = Hardware(accelerator="mps", fp16=True, bf16=False, bf16_native=False)
    out = adapt_config({"bf16": {"enabled": True}}, no_bf16, world_size=1)
    assert "bf16" not in out.config
    assert any(c.startswith("bf16 is not supported") for c in out.changes)


def test_load_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        load_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_config(bad)


# --- the native-bf16 probe and GANTRY_CPU_BF16 ------------------------------------------


class FakeAccelerator:
    """The part of DeepSpeed's accelerator that detect_hardware asks."""

    def __init__(self, name: str, fp16: bool = False, bf16: bool = True) -> None:
        self.name, self.fp16, self.bf16 = name, fp16, bf16

    def device_name(self) -> str:
        return self.name

    def is_fp16_supported(self) -> bool:
        return self.fp16

    def is_bf16_supported(self) -> bool:
        return self.bf16


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Sets what the CPU's native-bf16 probe answers; GANTRY_CPU_BF16 starts unset."""
    monkeypatch.delenv(BF16_ENV, raising=False)

    def says(native: bool) -> None:
        monkeypatch.setattr(ds_config, "probe_cpu_bf16", lambda: native)

    return says


@pytest.mark.parametrize("native", [True, False])
def test_unset_the_probe_decides(
    native: bool, probe: Callable[[bool], None], reference: dict[str, Any]
) -> None:
    probe(native)
    hw = detect_hardware(FakeAccelerator("cpu"))
    assert hw == Hardware("cpu", fp16=False, bf16=True, bf16_native=native)
    out = adapt_config(reference, hw, world_size=2)
    assert not any(BF16_ENV in c for c in out.changes)
    assert summary(out.config).startswith(f"ZeRO stage 3, {'bf16' if native else 'fp32'},")


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("value", ["0", "1", " 1 "])
def test_forced_answer_wins_over_the_probe_and_is_logged(
    native: bool,
    value: str,
    probe: Callable[[bool], None],
    monkeypatch: pytest.MonkeyPatch,
    reference: dict[str, Any],
) -> None:
    probe(native)
    monkeypatch.setenv(BF16_ENV, value)
    forced = value.strip() == "1"
    hw = detect_hardware(FakeAccelerator("cpu"))
    assert (hw.bf16_native, hw.bf16_forced, hw.bf16_probed, hw.bf16) == (forced, True, native, True)
    out = adapt_config(reference, hw, world_size=2)
    precision = "bf16" if forced else "fp32"
    assert summary(out.config) == f"ZeRO stage 3, {precision}, micro batch 4, accumulation 4"
    said, meant = ("native" if native else "emulated"), ("native" if forced else "emulated")
    # the first line says the answer was forced, and what the probe would have said
    assert out.changes[0] == (
        f"{BF16_ENV}={int(forced)}: bf16 taken as {meant} on the cpu accelerator "
        f"(forced; the probe found it {said})"
    )
    assert out.changes[1].startswith("fp16 is not supported on the cpu accelerator")
    assert out.changes[1].endswith(f"using {precision}")


def test_forced_bf16_also_decides_precision_auto(
    probe: Callable[[bool], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    probe(False)
    monkeypatch.setenv(BF16_ENV, "1")
    cfg = {"bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}
    out = adapt_config(cfg, detect_hardware(FakeAccelerator("cpu")), world_size=1)
    assert out.config["bf16"]["enabled"] is True and out.config["fp16"]["enabled"] is False
    assert 'precision "auto" -> bf16 on the cpu accelerator' in out.changes


@pytest.mark.parametrize("value", ["yes", "true", "2", "-1", "on", "0 1"])
def test_bad_override_is_a_one_line_error(
    value: str, probe: Callable[[bool], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    probe(True)
    monkeypatch.setenv(BF16_ENV, value)
    for accelerator in ("cpu", "cuda"):  # a typo is caught wherever it runs
        with pytest.raises(ValueError) as err:
            detect_hardware(FakeAccelerator(accelerator))
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"{BF16_ENV}={value!r} is not allowed")
        assert "use 1" in message and "or 0" in message and "unset" in message


def test_empty_override_is_unset() -> None:
    assert cpu_bf16_override({BF16_ENV: ""}) is None
    assert cpu_bf16_override({}) is None
    assert cpu_bf16_override({BF16_ENV: "0"}) is False
    assert cpu_bf16_override({BF16_ENV: "1"}) is True


@pytest.mark.parametrize("value", ["0", "1"])
def test_override_is_ignored_off_the_cpu_accelerator(
    value: str, probe: Callable[[bool], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    probe(value == "0")  # the CPU's probe is not asked for a GPU
    monkeypatch.setenv(BF16_ENV, value)
    hw = detect_hardware(FakeAccelerator("cuda", fp16=True, bf16=True))
    assert hw == GPU
    no_bf16 = detect_hardware(FakeAccelerator("mps", fp16=True, bf16=False))
    assert (no_bf16.bf16, no_bf16.bf16_native, no_bf16.bf16_forced) == (False, False, False)
    assert not any(BF16_ENV in c for c in adapt_config({}, hw, world_size=1).changes)


def test_probe_answers_a_bool_on_this_machine() -> None:
    import torch

    expected = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert ds_config.probe_cpu_bf16() is expected
