"""Fine-tune a causal LM on multi-turn conversations with the Hugging Face Trainer.

    python train.py --data train.jsonl --output_dir out \\
        [--deepspeed ds_config.json] [--model_name_or_path tiny-moe|tiny-llama|DIR] \\
        [--per_device_train_batch_size 4] [--gradient_accumulation_steps 4] \\
        [--num_train_epochs 3 | --max_steps N] [--learning_rate 2e-5] [--warmup_steps 500] \\
        [--logging_dir ./logs] [--resume_from_checkpoint latest|PATH] [--max_length 256] \\
        [--gantry_callback] [any other TrainingArguments flag]

Data: JSON lines `{"text": [system, user, system, user, ...]}`; each user entry holds the
prompt, an `<end>` marker and the reply. A conversation trains as one sequence

    <|system|> SYSTEM<|user|> PROMPT<|assistant|> REPLY<|endoftext|> ...

with the loss on the replies (and their end-of-text) only. Conversations that are not
(system, user) pairs, that have a turn without a reply, or that are longer than
--max_length tokens are left out.

Model: `tiny-moe` (Mixtral-style, 16 experts, 2 active per token) or `tiny-llama` are
built from a transformers config (no download); a directory is loaded with its weights.
The tokenizer is a byte-level BPE trained on --data (deterministic: every rank trains
the same one) and saved in --output_dir; a resumed run uses the checkpoint's.

--resume_from_checkpoint: a checkpoint folder, or `latest` for the newest complete
OUTPUT_DIR/checkpoint-N (none yet: a fresh start). --deepspeed_config is read as
--deepspeed; --logging_dir sets TENSORBOARD_LOGGING_DIR (transformers 5 has no flag).
Without CUDA the Trainer runs on the CPU (--use_cpu is implied).

Launch with `deepspeed`, `torchrun`, or as plain processes given RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT (how Gantry starts ranks).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import (
    AutoModelForCausalLM,
    HfArgumentParser,
    LlamaConfig,
    MixtralConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
    set_seed,
)

END_MARKER = "<end>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
EOS, PAD = "<|endoftext|>", "<|pad|>"
IGNORE_INDEX = -100
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

# DeepSpeed calls torch collectives that torch 2.13 deprecates, and each call warns again.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")


@dataclass
class ScriptArguments:
    data: str = field(metadata={"help": "JSONL conversations"})
    model_name_or_path: str = field(
        default="tiny-moe", metadata={"help": "tiny-moe, tiny-llama, or a model directory"}
    )
    max_length: int = field(default=256, metadata={"help": "tokens per conversation, at most"})
    vocab_size: int = field(default=1024, metadata={"help": "of the trained tokenizer"})
    logging_dir: str | None = field(default=None, metadata={"help": "TensorBoard's directory"})
    gantry_callback: bool = field(
        default=False, metadata={"help": "report to Gantry (agent.hf_callback) if installed"}
    )


# --- data ------------------------------------------------------------------------------


Turn = tuple[str, str, str]  # system, prompt, reply


def parse_conversation(record: object) -> list[Turn] | None:
    """The (system, prompt, reply) turns of one record; None when it does not train."""
    if not isinstance(record, dict):
        return None
    text = record.get("text")
    if not isinstance(text, list) or not text or len(text) % 2:
        return None
    if not all(isinstance(t, str) for t in text):
        return None
    turns = []
    for system, user in zip(text[0::2], text[1::2], strict=True):
        prompt, marker, reply = user.partition(END_MARKER)
        if not marker or not reply.strip():
            return None
        turns.append((system.strip(), prompt.strip(), reply.strip()))
    return turns


def read_conversations(path: Path) -> list[list[Turn]]:
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                turns = parse_conversation(json.loads(line))
            except ValueError:
                turns = None
            if turns is not None:
                out.append(turns)
    return out


def segments(turns: Sequence[Turn]) -> list[str]:
    """Prompt and reply segments, alternating: the replies are what the loss sees."""
    out = []
    for system, prompt, reply in turns:
        out += [f"{SYSTEM} {system}{USER} {prompt}{ASSISTANT}", f" {reply}{EOS}"]
    return out


def train_tokenizer(
    conversations: Sequence[list[Turn]], vocab_size: int
) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, EOS, SYSTEM, USER, ASSISTANT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (f" {part}" for turns in conversations for turn in turns for part in turn)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],
    )


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    tok: PreTrainedTokenizerFast = PreTrainedTokenizerFast.from_pretrained(str(path))
    return tok


class Conversations(Dataset[dict[str, list[int]]]):
    """Token ids and labels (IGNORE_INDEX on system and prompt tokens) per conversation."""

    def __init__(
        self,
        conversations: Sequence[list[Turn]],
        tokenizer: PreTrainedTokenizerFast,
        max_length: int,
    ) -> None:
        self.examples: list[dict[str, list[int]]] = []
        self.too_long = 0
        for turns in conversations:
            encoded = tokenizer(segments(turns), add_special_tokens=False)["input_ids"]
            ids: list[int] = []
            labels: list[int] = []
            for i, part in enumerate(encoded):
                ids += part
                labels += part if i % 2 else [IGNORE_INDEX] * len(part)
            if len(ids) > max_length:
                self.too_long += 1
                continue
            self.examples.append({"input_ids": ids, "labels": labels})

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.examples[i]


class PadCollator:
    """Right-pads a batch; padding is masked out and ignored by the loss."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[row, :n] = torch.tensor(e["input_ids"])
            labels[row, :n] = torch.tensor(e["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --- model -----------------------------------------------------------------------------


def model_config(
    name: str, tokenizer: PreTrainedTokenizerFast, max_length: int
) -> PretrainedConfig:
    ids: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": None,
        "max_position_embeddings": max(max_length, 128),
        "tie_word_embeddings": False,
    }
    if name == "tiny-moe":
        return MixtralConfig(
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            num_local_experts=16,
            num_experts_per_tok=2,
            **ids,
        )
    if name == "tiny-llama":
        return LlamaConfig(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **ids,
        )
    raise ValueError(f"--model_name_or_path {name}: not tiny-moe, tiny-llama or a directory")


def build_model(
    name: str, tokenizer: PreTrainedTokenizerFast, max_length: int, seed: int
) -> PreTrainedModel:
    if Path(name, "config.json").is_file():
        loaded: PreTrainedModel = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
        if getattr(loaded.get_input_embeddings(), "num_embeddings", None) != len(tokenizer):
            loaded.resize_token_embeddings(len(tokenizer))
        return loaded
    torch.manual_seed(seed)  # every rank starts from the same weights
    model: PreTrainedModel = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
        model_config(name, tokenizer, max_length)
    )
    return model


# --- arguments and checkpoints ---------------------------------------------------------


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """The seed's --deepspeed_config as the Trainer's --deepspeed; --use_cpu without CUDA."""
    out = []
    for arg in argv:
        if arg == "--deepspeed_config":
            arg = "--deepspeed"
        elif arg.startswith("--deepspeed_config="):
            arg = "--deepspeed=" + arg.split("=", 1)[1]
        out.append(arg)
    if not torch.cuda.is_available() and not any(a.startswith("--use_cpu") for a in out):
        out.append("--use_cpu")
    return out


def join_before_deepspeed(argv: Sequence[str]) -> None:
    """On CPU, join the process group through DeepSpeed before the Trainer's arguments
    are built. --use_cpu makes accelerate start a plain gloo group and leave DeepSpeed's
    own uninitialized; ZeRO-3 then builds the model under `deepspeed.zero.Init` as if it
    were alone (a batch-size mismatch), or, in one process, looks for MPI. On GPUs
    accelerate does this itself."""
    if torch.cuda.is_available():
        return
    if not any(a == "--deepspeed" or a.startswith("--deepspeed=") for a in argv):
        return
    import deepspeed

    if "RANK" not in os.environ:  # one process, started by hand
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False, verbose=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest OUTPUT_DIR/checkpoint-N that was written to the end (trainer_state.json
    is the Trainer's last file of a checkpoint)."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = CHECKPOINT.match(child.name)
            if match and (child / "trainer_state.json").is_file():
                found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def resolve_resume(value: str | None, output_dir: Path) -> Path | None:
    if not value or value.lower() in ("none", "false"):
        return None
    if value.lower() in ("latest", "true"):
        return latest_checkpoint(output_dir)
    path = Path(value)
    if not path.is_dir():
        raise SystemExit(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    return path


def add_gantry_callback(trainer: Trainer) -> None:
    """Report to Gantry (agent.hf_callback) when it is installed; the script trains the
    same without it, and Gantry then reads the log lines the Trainer prints."""
    try:
        from agent.rank.hf_callback import GantryCallback
    except ImportError:
        print("--gantry_callback: agent.hf_callback is not importable", flush=True)
        return
    trainer.add_callback(GantryCallback())


def main(argv: Sequence[str] | None = None) -> int:
    arguments = normalize_argv(sys.argv[1:] if argv is None else argv)
    join_before_deepspeed(arguments)
    parser = HfArgumentParser((ScriptArguments, TrainingArguments))  # type: ignore[arg-type]
    script, args = parser.parse_args_into_dataclasses(args=arguments)
    assert isinstance(script, ScriptArguments) and isinstance(args, TrainingArguments)
    if script.logging_dir:
        os.environ.setdefault("TENSORBOARD_LOGGING_DIR", script.logging_dir)
    output_dir = Path(args.output_dir or "out")
    resume = resolve_resume(args.resume_from_checkpoint, output_dir)
    set_seed(args.seed)

    conversations = read_conversations(Path(script.data))
    if resume is not None and (resume / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(resume)  # the ids the checkpoint was trained on
    else:
        tokenizer = train_tokenizer(conversations, script.vocab_size)
    if args.process_index == 0:
        tokenizer.save_pretrained(str(output_dir))
    dataset = Conversations(conversations, tokenizer, script.max_length)
    if len(dataset) == 0:
        raise SystemExit(f"--data {script.data}: no conversation to train on")
    model = build_model(script.model_name_or_path, tokenizer, script.max_length, args.seed)
    if args.process_index == 0:
        # ZeRO-3 builds the model partitioned: numel() is 0 and ds_numel the real size
        n_params = sum(getattr(p, "ds_numel", 0) or p.numel() for p in model.parameters())
        print(
            f"{script.model_name_or_path}: {n_params:,} parameters; {len(dataset)} conversations"
            f" ({dataset.too_long} longer than {script.max_length} tokens left out);"
            f" vocabulary {len(tokenizer)}; "
            + (f"resuming from {resume}" if resume else "starting fresh"),
            flush=True,
        )

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PadCollator(int(tokenizer.pad_token_id)),
        processing_class=tokenizer,
    )
    if script.gantry_callback:
        add_gantry_callback(trainer)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    trainer.save_model(str(output_dir))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Without it, gloo's worker threads can still be alive when the interpreter
        # tears down, and the rank aborts after its work is done ("terminate called
        # without an active exception", pytorch/pytorch#190489).
        torch.distributed.destroy_process_group()
    return 0


def exit_now(code: int) -> None:
    """Ends the process without the interpreter's teardown, its output flushed.

    A rank whose work is done can still abort as the interpreter tears down ("terminate
    called without an active exception"): destroy_process_group() only unregisters the
    gloo group, DeepSpeed's engine and ZeRO-3's parameters still hold it, and its threads
    outlive the interpreter (pytorch/pytorch#179291, #96017). Seen here once in a few
    runs even with the group destroyed; a finished attempt then counts as failed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
