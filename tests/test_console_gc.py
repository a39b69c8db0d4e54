"""The console's collector tuning: Textual's strips without self-references give the
same answers, and a strip the compositor has divided is freed by refcounting."""

from __future__ import annotations

import gc

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip

import console.ui.app
from console.ui.app import _untangle_strips


def _strip() -> Strip:
    return Strip([Segment("hello ", Style(bold=True)), Segment("world", None)], 11)


CUTS = [[11], [3, 11], [3, 200], [200], [], [5], [11, 11], [4, 8, 11]]
CROPS = [(0, 11), (0, 20), (2, 11), (0, 5), (3, 30)]


def _answers() -> tuple[list[list[list[Segment]]], list[list[Segment]]]:
    divided = [[list(part) for part in _strip().divide(cuts)] for cuts in CUTS]
    cropped = [list(_strip().crop_extend(a, b, Style(italic=True))) for a, b in CROPS]
    return divided, cropped


def test_untangled_strips_answer_as_before() -> None:
    if not getattr(Strip, "_gantry_untangled", False):
        before = _answers()
        _untangle_strips()
        assert _answers() == before
    _untangle_strips()  # twice is once
    assert Strip.divide.__name__ == "divide_untangled"


def test_divided_strip_needs_no_cyclic_collection() -> None:
    _untangle_strips()
    gc.collect()
    gc.disable()
    try:
        strip = _strip()
        strip.divide([11])
        strip.crop_extend(0, 11, None)
        tracked = len(gc.get_objects())
        del strip
        assert len(gc.get_objects()) < tracked  # gone at once, not left for the collector
    finally:
        gc.enable()


def test_thresholds_keep_young_collections_small() -> None:
    young, middle, _ = console.ui.app.GC_THRESHOLDS
    assert young * middle <= 20_000
