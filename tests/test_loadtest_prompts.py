"""Prompt files in the shapes of the wild (tests/fixtures/prompts/, sources in
SOURCES.md): JSONL or a JSON array; prompt/text, OpenAI chat messages, ShareGPT
conversations, Alpaca instructions; bad records are one line naming where."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from console.loadtest import prompts as prompts_module
from console.loadtest.config import LoadTestError
from console.loadtest.prompts import BUILT_IN, describe_requests, read_prompts

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "prompts"


def test_prompt_and_text_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"text": "b"}\n')
    assert read_prompts(path).prompts == ["a", "b"]
    assert read_prompts(None).prompts == list(BUILT_IN)


def test_sharegpt_gives_each_conversations_first_human_turn() -> None:
    read = read_prompts(FIXTURES / "sharegpt_v3_shape.json")
    assert read.prompts == [
        "Summarize the main ideas of Jeff Walker's Product Launch Formula into bullet points.",
        "How to tell if a customer segment is well segmented? In 3 bullet points.",
    ]
    assert read.skipped == 2  # empty, and one that opens with "gpt"
    described = describe_requests(read, FIXTURES / "sharegpt_v3_shape.json")
    assert described.startswith(
        "sharegpt_v3_shape.json: 2 prompts (2 conversations with no user turn skipped), sha256 "
    )


def test_openai_chat_messages_give_the_first_user_message() -> None:
    assert read_prompts(FIXTURES / "openai_chat.jsonl").prompts == [
        "What is the capital of France?",
        "Describe this in one line.",
    ]


def test_alpaca_instructions_with_their_input() -> None:
    assert read_prompts(FIXTURES / "alpaca.json").prompts == [
        "Give three tips for staying healthy.",
        "Translate the following sentence into French.\n\nThe weather is nice today.",
    ]


def test_a_large_file_is_cut_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompts_module, "MAX_PROMPTS", 3)
    path = tmp_path / "many.json"
    path.write_text(json.dumps([{"prompt": f"p{i}"} for i in range(5)]))
    read = read_prompts(path)
    assert read.prompts == ["p0", "p1", "p2"] and read.more
    assert describe_requests(read, path).startswith("many.json: the first 3 prompts, sha256 ")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"prompt": "a"}\n{"other": 1}\n', "line 2: needs a non-empty"),
        ('{"prompt": ""}\n', "line 1: needs a non-empty"),
        ('{"messages": [{"role": "system", "content": "x"}]}\n', "line 1: needs a non-empty"),
        ("not json\n", "line 1: not JSON"),
        ('[{"prompt": "a"}, 3]', "record 1: needs a non-empty"),
        ('[{"prompt": "a"},', "not JSON"),
        ('[{"conversations": []}]', "no prompts in the file"),
        ("", "no prompts in the file"),
    ],
)
def test_bad_files_are_one_line_naming_where(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text)
    with pytest.raises(LoadTestError, match=error) as caught:
        read_prompts(path)
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(LoadTestError, match=r"--prompts .*nope\.jsonl: No such file"):
        read_prompts(tmp_path / "nope.jsonl")
