"""agent.ml.data and agent.demo_data: parsing, masking, prepare, sampling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agent.ml.data import (
    ASSISTANT_TOKEN,
    EOS_TOKEN,
    IGNORE_INDEX,
    ConversationDataset,
    MalformedConversation,
    Turn,
    batches_per_epoch,
    collate,
    encode_turns,
    eval_prompts,
    load_tokenizer,
    parse_conversation,
    prepare,
    rank_batches,
    rank_sampler,
    split_user,
    train_tokenizer,
)
from agent.rank import demo_data


def convo(*pairs: tuple[str, str]) -> dict[str, list[str]]:
    return {"text": [x for pair in pairs for x in pair]}


def test_split_user_on_end_marker() -> None:
    assert split_user("a b c <end> c b a") == ("a b c", "c b a")
    assert split_user("a b c <end>") == ("a b c", "")
    assert split_user("no marker here") == ("no marker here", "")
    # only the first marker splits; the reply may mention it
    assert split_user("x <end> y <end> z") == ("x", "y <end> z")


def test_parse_pairs() -> None:
    turns = parse_conversation(convo(("sys one", "p1 <end> r1"), ("sys two", "p2 <end> r2")))
    assert turns == [Turn("sys one", "p1", "r1"), Turn("sys two", "p2", "r2")]


@pytest.mark.parametrize(
    "record",
    [
        [],
        {"txt": ["a", "b"]},
        {"text": "a <end> b"},
        {"text": []},
        {"text": ["system only"]},
        {"text": ["s", "u <end> r", "s2"]},
        {"text": ["s", 3]},
    ],
)
def test_malformed(record: object) -> None:
    with pytest.raises(MalformedConversation):
        parse_conversation(record)


def test_eval_prompts_carry_history() -> None:
    turns = [Turn("s", "a b", "b a"), Turn("s", "c d", "d c")]
    (p1, r1), (p2, r2) = eval_prompts(turns)
    assert p1.endswith(ASSISTANT_TOKEN) and r1 == "b a"
    assert p2.startswith(p1) and f" b a{EOS_TOKEN}" in p2 and r2 == "d c"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    demo_data.write_demo(out, n_train=1500, n_heldout=20, seed=3)
    return out


@pytest.fixture(scope="module")
def prepared(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(demo / "train.jsonl", out, max_length=128, log=lambda _: None)
    return out


def test_masking_only_responses_train(prepared: Path) -> None:
    tok = load_tokenizer(prepared / "tokenizer")
    turns = [Turn("Say the words backwards.", "apple river stone", "stone river apple")] * 2
    ex = encode_turns(turns, tok)
    ids, labels = ex["input_ids"], ex["labels"]
    assert len(ids) == len(labels)
    trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels, strict=True))
    # both responses with their end-of-text, nothing else
    assert tok.decode(trained) == f" stone river apple{EOS_TOKEN}" * 2
    # one token per demo word
    assert len(tok(" stone river apple", add_special_tokens=False)["input_ids"]) == 3
    # truncation keeps the two lists aligned
    short = encode_turns(turns, tok, max_length=7)
    assert len(short["input_ids"]) == len(short["labels"]) == 7


def test_collate_pads_and_masks() -> None:
    batch = collate(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_demo_is_deterministic_and_has_bad_records() -> None:
    a = demo_data.generate(50, 10, seed=7)
    assert a == demo_data.generate(50, 10, seed=7)
    assert a != demo_data.generate(50, 10, seed=8)
    train, heldout = a
    held = {t.prompt for r in heldout for t in parse_conversation(r)}
    for record in train:
        turns = parse_conversation(record)
        for t in turns:
            if t.response and len(t.prompt.split()) <= demo_data.MAX_WORDS:
                assert t.response == demo_data.reply_for(t.prompt)
                assert t.prompt not in held


def test_prepare_drops_shards_and_is_idempotent(demo: Path, prepared: Path) -> None:
    report = json.loads((prepared / "prepare_report.json").read_text())
    d = demo_data
    assert report["dropped"] == {
        "malformed": 0,
        "empty_response": d.BAD_EMPTY + d.BAD_NO_MARKER,
        "duplicate": d.BAD_DUPLICATE,
        "over_length": d.BAD_OVERLONG,
    }
    assert report["kept"] == 1500
    assert report["shards"] == ["shard-00000.jsonl", "shard-00001.jsonl"]
    lines = [(prepared / s).read_text().splitlines() for s in report["shards"]]
    assert [len(x) for x in lines] == [1000, 500]
    assert len({line for shard in lines for line in shard}) == 1500  # no duplicates left

    mtimes = {p: p.stat().st_mtime_ns for p in prepared.iterdir()}
    messages: list[str] = []
    again = prepare(demo / "train.jsonl", prepared, max_length=128, log=messages.append)
    assert again["skipped"] is True and again["dropped"] == report["dropped"]
    assert "nothing to do" in messages[0]
    assert {p: p.stat().st_mtime_ns for p in prepared.iterdir()} == mtimes


def test_prepare_reports_malformed_and_redoes_changed_input(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    good = [convo(("s", f"w{i} x <end> x w{i}")) for i in range(5)]
    lines = [json.dumps(g) for g in good] + ["not json", json.dumps({"text": ["s"]}), ""]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    report = prepare(data, out, max_length=64, shard_size=2, log=lambda _: None)
    assert report["dropped"]["malformed"] == 2 and report["kept"] == 5
    assert len(report["shards"]) == 3
    data.write_text("\n".join(lines[:2]) + "\n")  # changed input: prepared again
    report = prepare(data, out, max_length=64, shard_size=2, log=lambda _: None)
    assert report["skipped"] is False and report["kept"] == 2
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.jsonl"]


def test_distributed_sampler_partitions(prepared: Path) -> None:
    tok = load_tokenizer(prepared / "tokenizer")
    ds = ConversationDataset(prepared, tok, 128)
    assert len(ds) == 1500
    shares = [list(rank_sampler(ds, r, 2, seed=1, epoch=0)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 750
    assert set(shares[0]).isdisjoint(shares[1])
    assert set(shares[0]) | set(shares[1]) == set(range(1500))
    assert list(rank_sampler(ds, 0, 2, seed=1, epoch=1)) != shares[0]  # reshuffled per epoch

    assert batches_per_epoch(ds, 2, 4) == 188
    full = list(rank_batches(ds, rank=1, world_size=2, micro_batch=4, seed=1, epoch=0, pad_id=0))
    skipped = rank_batches(
        ds, rank=1, world_size=2, micro_batch=4, seed=1, epoch=0, skip_batches=5, pad_id=0
    )
    rest = list(skipped)
    assert len(full) == 188 and len(rest) == 183
    assert rest[0]["input_ids"].tolist() == full[5]["input_ids"].tolist()


def test_tokenizer_trained_locally_reloads(tmp_path: Path) -> None:
    tok = train_tokenizer([" apple river", " river apple"] * 20, vocab_size=300)
    tok.save_pretrained(str(tmp_path))
    again = load_tokenizer(tmp_path)
    ids = again(" apple river", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2 and again.decode(ids) == " apple river"
    assert again.eos_token == EOS_TOKEN and again.pad_token_id is not None


def test_prepare_cli(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from agent.ml.data import main

    args = ["prepare", "--data", str(demo / "heldout.jsonl"), "--out", str(tmp_path)]
    assert main([*args, "--max-length", "128"]) == 0
    out = capsys.readouterr().out
    assert "kept 20" in out and (tmp_path / "manifest.json").is_file()
