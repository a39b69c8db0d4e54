"""agent.ds_config: adapting a DeepSpeed config to the hardware (pure)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agent.ds_config import Hardware, adapt_config, load_config, summary

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
