"""The console's widgets' pure parts: bars and glyphs, figures, column layout, GPU
values (no app)."""

from __future__ import annotations

import pytest
from textual.content import Content

from console.model.bars import (
    DASH,
    block,
    fit,
    format_bytes,
    format_bytes_pair,
    format_bytes_short,
    format_percent,
    format_rate,
    format_rate_short,
    hbar,
    percent_of,
)
from console.model.node_gpus import gpu_values
from console.ui.widgets.cluster_table import choose_layout
from console.ui.widgets.spans import spaces_outside_spans
from tests.console_fixtures import (
    FIXED,
    GIB,
    make_sample,
)

# -- pure functions -------------------------------------------------------------


def test_block_glyphs() -> None:
    assert block(None) == DASH
    assert block(0) == "▁"
    assert block(-3) == "▁"
    assert block(49) == "▄"
    assert block(50) == "▅"
    assert block(100) == "█"
    assert block(250) == "█"
    assert block(float("nan")) == "▁"


@pytest.mark.parametrize(
    ("percent", "width", "expected"),
    [
        (None, 3, "   "),
        (0, 4, "    "),
        (100, 4, "████"),
        (50, 4, "██  "),
        (12.5, 1, "▏"),
        (99, 1, "█"),
        (60, 5, "███  "),
        (55, 3, "█▋ "),
        (40, 0, ""),
    ],
)
def test_hbar(percent: float | None, width: int, expected: str) -> None:
    assert hbar(percent, width) == expected
    assert len(hbar(percent, width)) == width


def test_hbar_is_always_its_width() -> None:
    for width in range(1, 9):
        for tenth in range(-10, 1100):
            assert len(hbar(tenth / 10, width)) == width


def test_percent_formatting() -> None:
    assert format_percent(None) == DASH
    assert format_percent(87.4) == "87%"
    assert percent_of(None, 10) is None
    assert percent_of(5, 0) is None
    assert percent_of(5, 20) == 25.0


def test_byte_formatting() -> None:
    assert format_bytes(None) == DASH
    assert format_bytes(0) == "0 B"
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(12.3 * GIB) == "12.3 GiB"
    assert format_bytes_pair(64.2 * GIB, 80 * GIB) == "64.2/80.0 GiB"
    assert format_bytes_pair(300 * GIB, 1024 * GIB) == "300.0 GiB/1.0 TiB"
    assert format_bytes_pair(None, 80 * GIB) == DASH
    assert format_bytes_pair(3 * GIB, 0) == "3.0 GiB"
    assert format_bytes_short(None) == DASH
    assert format_bytes_short(0) == "0B"
    assert format_bytes_short(412 * GIB) == "412G"
    assert format_bytes_short(9.5 * GIB) == "9.5G"
    assert format_bytes_short(1024 * GIB) == "1.0T"
    assert format_bytes_short(980 * 1024**2) == "980M"


def test_rate_formatting() -> None:
    assert format_rate(None) == DASH
    assert format_rate(0) == "0 B/s"
    assert format_rate(999) == "999 B/s"
    assert format_rate(1000) == "1.0 kB/s"
    assert format_rate(1.2e6) == "1.2 MB/s"
    assert format_rate(3.4e8) == "340 MB/s"
    assert format_rate(-5) == "0 B/s"
    assert format_rate_short(1.2e9) == "1.2G"
    assert format_rate_short(3.4e8) == "340M"
    for exponent in range(0, 13):  # up to 9.99 TB/s
        assert len(format_rate(10.0**exponent * 9.99)) <= 8
        assert len(format_rate_short(10.0**exponent * 9.99)) <= 4
        assert len(format_bytes_short(2.0**exponent * 1000)) <= 4


def test_spaces_outside_spans_keeps_the_text_and_moves_boundaries_off_spaces() -> None:
    content = Content.from_markup("[b]gantry[/b] · nodes [green] 5/8[/] live · [b]40[/b] GPUs")
    tidy = spaces_outside_spans(content)
    text = tidy.plain
    assert text == content.plain
    assert [text[s.start : s.end] for s in tidy.spans] == ["gantry ", "5/8 ", "40 "]
    for span in tidy.spans:
        assert text[span.start] != " "
        assert span.end == len(text) or text[span.end] != " "
    assert spaces_outside_spans(Content.from_markup("[b]   [/b]x")).spans == []


def test_fit() -> None:
    assert fit("ab", 4) == "ab  "
    assert fit("abcdef", 4) == "abc…"
    assert fit("abcd", 4) == "abcd"
    assert fit("abc", 0) == ""


def test_layout_always_fits_and_narrows_to_block_glyphs() -> None:
    for width in range(72, 260):  # 72: the narrowest layout with 8 GPUs
        for slots in (0, 1, 2, 4, 8):
            layout = choose_layout(width, slots, 8)
            assert layout.total <= width
    narrow = choose_layout(79, 8, 7)
    assert (narrow.util_bar, narrow.mem_bar, narrow.wide) == (0, 0, False)
    wide = choose_layout(159, 8, 7)
    assert wide.util_bar >= 2 and wide.wide
    few = choose_layout(159, 2, 7)
    assert few.util_bar > 0 and few.mem_bar > 0


def test_gpu_values_show_dashes_for_unsupported_fields() -> None:
    sample = make_sample("n", 1, 0, FIXED, 4, unsupported_gpu=2, error_gpu=3)
    assert gpu_values(sample.gpus[2])["util"] == DASH
    assert gpu_values(sample.gpus[2])["power"] == DASH
    assert gpu_values(sample.gpus[2])["temp"] == "60 °C"
    assert set(gpu_values(sample.gpus[3]).values()) == {DASH}
    assert gpu_values(sample.gpus[0])["power"].endswith("/700 W")
