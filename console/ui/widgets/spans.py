"""Markup made into Content that every viewer draws as a terminal does."""

from __future__ import annotations

from textual.content import Content, Span


def spaces_outside_spans(content: Content) -> Content:
    """The same text and look, with no styled span starting or ending before a space.

    Each span gives up its leading spaces and takes the spaces that follow it, so
    every change of style falls just before a visible character. A terminal shows
    the same thing (for spans without a background); viewers that trim every run of
    text (librsvg, which draws the snapshot SVGs) no longer swallow the space after
    a bold or coloured word. For markup whose spans have no background.
    """
    text = content.plain
    end_of_text = len(text)
    spans = []
    for span in content.spans:
        start, end = span.start, span.end
        while start < end and text[start] == " ":
            start += 1
        while end < end_of_text and text[end] == " ":
            end += 1
        if start < end:
            spans.append(Span(start, end, span.style))
    return Content(text, spans, strip_control_codes=False)
