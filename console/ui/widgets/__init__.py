"""Reusable widgets of the console."""

from console.ui.widgets.cluster_table import ClusterTable, TableLayout, choose_layout

__all__ = ["ClusterTable", "TableLayout", "choose_layout"]
