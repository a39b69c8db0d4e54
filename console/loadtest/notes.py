"""The warnings a run's figures call for, shown live and kept in the report's notes (pure)."""

from __future__ import annotations

from console.loadtest.histogram import Dist

LATE_SEND_MS = 10.0  # a p99 send lag above this gets a note
# A median completion at or below this share of max_tokens is "far below" it.
SHORT_COMPLETION_SHARE = 0.5
EARLY_FINISHES = ("eos", "stop")  # why a completion ends before max_tokens


def closed_loop_note(concurrency: int) -> str:
    return (
        "closed loop hides stalls (coordinated omission): each of the "
        f"{concurrency} requests in flight is sent only after the previous one is answered, "
        "so a stall holds sends back instead of showing in the latencies; "
        "measure latency with an open loop (--rate)"
    )


def short_completions_note(
    completion_tokens: Dist | None,
    max_tokens: int | None,
    finishes: dict[str, int],
    ignore_eos: bool,
) -> str | None:
    """A note when the median completion is far below max_tokens because the model ended
    it (end-of-sequence), not the length limit: each request then does less work than the
    load test asks for."""
    if completion_tokens is None or not completion_tokens.count or not max_tokens:
        return None
    if max_tokens < 2 or completion_tokens.p50 > max_tokens * SHORT_COMPLETION_SHARE:
        return None
    known = sum(finishes.values())
    early = sum(finishes.get(reason, 0) for reason in EARLY_FINISHES)
    if known and 2 * early < known:
        return None  # mostly cut by length (the model's context), not by the model
    why = (
        f"{early} of {known} answers ended at end-of-sequence"
        if known
        else "the endpoint does not say why they ended"
    )
    fix = (
        "--ignore-eos is set, yet they end early: the endpoint may not honour it"
        if ignore_eos
        else "--ignore-eos (on the screen: ignore EOS yes) makes each one decode max_tokens"
    )
    median = round(completion_tokens.p50)
    return (
        f"completions are short: median {median} token{'' if median == 1 else 's'}, "
        f"max_tokens {max_tokens} ({why}), so each request does less work than asked; {fix}"
    )


def send_lag_note(send_lag: Dist | None) -> str | None:
    if send_lag is None or send_lag.p99 <= LATE_SEND_MS:
        return None
    return (
        f"the client sent late (send lag p99 {send_lag.p99:.1f} ms): the latencies "
        "include that wait; more --workers may help"
    )


def unfinished_note(unfinished: int, stopped: bool, timeout_s: float) -> str | None:
    if not unfinished or stopped:
        return None
    return (
        f"{unfinished} requests were still unanswered {timeout_s:g} s "
        "after sending ended and were cut off"
    )
