"""Reusable widgets of the console (import each from its module)."""
