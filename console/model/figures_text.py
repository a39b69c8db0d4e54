"""Figures as short text: a value in at most a few cells, whatever its magnitude."""

from __future__ import annotations

from console.model.bars import DASH


def format_figure(value: float | None) -> str:
    """`value` in a handful of cells: thousands as "k", small values with more digits."""
    if value is None:
        return DASH
    magnitude = abs(value)
    if magnitude >= 10_000:
        return f"{value / 1000:,.0f}k"
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    if magnitude >= 1e-3:
        return f"{value:.4f}"
    return f"{value:.1e}"
