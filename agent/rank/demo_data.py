"""A learnable multi-turn conversation task, generated deterministically.

Every conversation is `{"text": [system, user, system, user, ...]}`; each user entry
holds the prompt, the `<end>` marker and the reply, which is the prompt's words in
reverse order. The vocabulary is small (one token per word once a tokenizer is
trained on it), so a tiny model learns the task in about a minute on two CPU ranks.

    python -m agent.demo_data --out DIR [--train N --heldout M --seed S]

writes DIR/train.jsonl (with a few deliberately bad records for `prepare` to drop:
empty replies, exact duplicates, over-length conversations) and DIR/heldout.jsonl
(clean, no prompt shared with train).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

END = "<end>"

WORDS = (
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "green",
    "seven",
    "paper",
    "music",
    "light",
    "horse",
    "window",
    "silver",
    "garden",
    "orange",
    "winter",
    "bread",
    "candle",
    "forest",
    "dragon",
    "yellow",
    "rocket",
    "ocean",
    "mirror",
    "pencil",
    "castle",
    "thunder",
    "violet",
    "copper",
    "lemon",
    "island",
)

SYSTEMS = (
    "Reverse the words.",
    "Say them backwards.",
    "Words in reverse order.",
)

MIN_WORDS = 3
MAX_WORDS = 6
MAX_TURNS = 3
OVERLONG_WORDS = 400  # far beyond any sensible --max-length for this task

# How many bad records of each kind go into train.jsonl.
BAD_EMPTY = 4
BAD_NO_MARKER = 2
BAD_DUPLICATE = 5
BAD_OVERLONG = 3


def reply_for(prompt: str) -> str:
    return " ".join(reversed(prompt.split()))


def _prompt(rng: random.Random, n_words: int | None = None) -> str:
    n = n_words if n_words is not None else rng.randint(MIN_WORDS, MAX_WORDS)
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _prompts(rng: random.Random) -> list[str]:
    """1-MAX_TURNS prompts with no word used twice in the conversation, so which
    word comes next in a reply is never ambiguous (a tiny model learns it faster)."""
    lengths = [rng.randint(MIN_WORDS, MAX_WORDS) for _ in range(rng.randint(1, MAX_TURNS))]
    words = rng.sample(WORDS, sum(lengths))
    out = []
    for n in lengths:
        out.append(" ".join(words[:n]))
        words = words[n:]
    return out


def _conversation(rng: random.Random, prompts: list[str]) -> dict[str, Any]:
    text: list[str] = []
    for prompt in prompts:
        text.append(rng.choice(SYSTEMS))
        text.append(f"{prompt} {END} {reply_for(prompt)}")
    return {"text": text}


def generate(
    n_train: int, n_heldout: int, seed: int = 0, bad_records: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, heldout) conversations; same arguments, same records."""
    rng = random.Random(seed)
    heldout: list[dict[str, Any]] = []
    held_prompts: set[str] = set()
    for _ in range(n_heldout):
        prompts = _prompts(rng)
        held_prompts.update(prompts)
        heldout.append(_conversation(rng, prompts))

    train: list[dict[str, Any]] = []
    while len(train) < n_train:
        prompts = _prompts(rng)
        if any(p in held_prompts for p in prompts):
            continue
        train.append(_conversation(rng, prompts))

    if bad_records and train:
        bad: list[dict[str, Any]] = []
        for _ in range(BAD_EMPTY):  # the marker is there, the reply is not
            convo = _conversation(rng, [_prompt(rng)])
            convo["text"][-1] = convo["text"][-1].split(END)[0] + END
            bad.append(convo)
        for _ in range(BAD_NO_MARKER):  # no marker at all: the reply is empty
            bad.append({"text": [rng.choice(SYSTEMS), _prompt(rng)]})
        for i in range(BAD_DUPLICATE):
            bad.append(json.loads(json.dumps(train[(i * 7) % len(train)])))
        for _ in range(BAD_OVERLONG):
            bad.append(_conversation(rng, [_prompt(rng, OVERLONG_WORDS)]))
        for record in bad:
            train.insert(rng.randint(0, len(train)), record)
    return train, heldout


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)


def write_demo(
    out: Path, n_train: int = 2000, n_heldout: int = 200, seed: int = 0
) -> tuple[Path, Path]:
    train, heldout = generate(n_train, n_heldout, seed)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "heldout.jsonl", heldout)
    return out / "train.jsonl", out / "heldout.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.demo_data", description=__doc__)
    parser.add_argument("--out", required=True, type=Path, help="directory for the two files")
    parser.add_argument("--train", type=int, default=2000, help="clean training conversations")
    parser.add_argument("--heldout", type=int, default=200, help="held-out conversations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train < 1 or args.heldout < 0:
        parser.error("--train must be positive and --heldout not negative")
    train, heldout = write_demo(args.out, args.train, args.heldout, args.seed)
    print(f"wrote {train} and {heldout}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
