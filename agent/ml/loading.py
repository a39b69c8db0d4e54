"""Load a model for inference: a plain Hugging Face directory or an int8 artifact of
`agent.tasks.quantize`.

The artifact is a directory holding

- `config.json` (and `generation_config.json`), the tokenizer files: as a HF directory;
- `quantized.pt`: `torch.save(model.state_dict())` of the quantized model. The Linears'
  weights are torchao `Int8Tensor`s (int8 data, per-row fp32 scales; whether activations
  are quantized too is recorded in each tensor), the fused experts' are the int8 and fp32
  buffers of `agent.ml.int8_experts.Int8Experts`, everything else is as trained (fp32). It
  loads with `torch.load(weights_only=True)`: torchao allow-lists its tensor classes.
- `gantry_quant.json`: the manifest (`MANIFEST`): format and version, the scheme, the
  experts modules replaced, what was and was not quantized, library versions.

Loading builds the model from its config without initializing weights, puts empty
Int8Experts where the manifest says, and assigns the saved tensors
(`load_state_dict(assign=True)`), so each Linear's weight becomes the saved Int8Tensor.
The model's own non-persistent buffers (rotary frequencies) come from its constructor.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MANIFEST = "gantry_quant.json"
STATE_FILE = "quantized.pt"
FORMAT = "gantry-int8"
FORMAT_VERSION = 1


class ModelLoadError(ValueError):
    """The directory cannot be loaded: one line naming what to fix."""


def quiet_torchao() -> None:
    """torchao logs warnings on import (its CUDA-only kernels fail to load on a CPU
    machine; torch deprecates its Enum registrations): not ours to act on."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


def is_quantized_dir(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    try:
        doc = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{file}: not a readable JSON manifest ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelLoadError(f"{file}: not a {FORMAT} manifest")
    if doc.get("version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"{file}: format version {doc.get('version')!r}, this Gantry reads {FORMAT_VERSION}"
        )
    return doc


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        tok: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(
            str(path), local_files_only=True
        )
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: cannot load its tokenizer ({_first_line(e)})") from e
    return tok


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model in eval mode on `device`, tokenizer) from a HF directory or an int8 artifact.
    ModelLoadError naming what is wrong when it cannot."""
    quiet_torchao()
    directory = Path(path)
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: no such model directory")
    if not (directory / "config.json").is_file():
        raise ModelLoadError(f"{directory}: no config.json (not a Hugging Face model directory)")
    model = _load_quantized(directory) if is_quantized_dir(directory) else load_hf(directory)
    tokenizer = load_tokenizer(directory)
    model.eval()  # type: ignore[no-untyped-call]
    model.to(device)  # type: ignore[arg-type]
    return model, tokenizer


def load_hf(directory: Path) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"{directory}: cannot load the model ({_first_line(e)})") from e
    return model


def build_skeleton(directory: Path) -> PreTrainedModel:
    """The model of `directory`'s config, weights allocated but not initialized."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    try:
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"{directory}/config.json: {_first_line(e)}") from e
    with no_init_weights():
        model: PreTrainedModel = AutoModelForCausalLM.from_config(config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    return model


def _load_quantized(directory: Path) -> PreTrainedModel:
    quiet_torchao()
    import torch

    # Importing torchao allow-lists its tensor classes for weights_only loads.
    import torchao.quantization  # type: ignore[import-untyped]  # noqa: F401
    from transformers import GenerationConfig

    from agent.ml.int8_experts import empty_experts

    manifest = read_manifest(directory)
    state_file = directory / str(manifest.get("state_dict", STATE_FILE))
    if not state_file.is_file():
        raise ModelLoadError(f"{directory}: {state_file.name} is missing")
    model = build_skeleton(directory)
    model.requires_grad_(False)
    experts = [str(name) for name in manifest.get("experts", [])]
    try:
        empty_experts(model, experts, weight_only=bool(manifest.get("weight_only")))
        state = torch.load(state_file, map_location="cpu", weights_only=True, mmap=True)
        model.load_state_dict(state, strict=True, assign=True)
    except (AttributeError, ValueError, RuntimeError, OSError) as e:
        raise ModelLoadError(
            f"{state_file}: does not load into the model of config.json ({_first_line(e)})"
        ) from e
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(directory))
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
