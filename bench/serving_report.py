"""bench/serving.py's report: a row per cell as it is measured, then the figures against
the issue's goals, and the last line's JSON keys."""

from __future__ import annotations

import argparse
import math
import os

from bench.serving_load import Cell, merge, ratio

GOAL_GAIN = 12.0
GOAL_TTFT_P50_MS = 100.0
GOAL_TTFT_P99_MS = 500.0
GOAL_TOKENS_PER_S_C64 = 12_000.0  # on a GPU
GOAL_REQUESTS_PER_S_C64 = 1_200.0  # the stretch, at 32 tokens a reply


HEADER = (
    f"{'setting':10} {'conc':>4} {'tokens/s':>9} {'tok/CPU':>7} {'req/s':>7} "
    f"{'ttft p50':>8} {'p99':>7} "
    f"{'srv p50':>7} {'srv p99':>7} {'batch':>5} {'tok/req':>7} {'finish':>15} "
    f"{'srv CPU':>7} {'bench':>5} {'other':>5} {'cut':>4} {'errors':>6}"
)


def print_cell(c: Cell) -> None:
    print(
        f"{c.setting:10} {c.concurrency:4} {c.tokens_per_s:9.1f} {c.tokens_per_cpu_s:7.0f} "
        f"{c.requests_per_s:7.2f} "
        f"{c.ttft_ms(50):8.1f} {c.ttft_ms(99):7.1f} {c.server_ttft_ms(50):7.1f} "
        f"{c.server_ttft_ms(99):7.1f} {c.mean_batch:5.1f} {c.mean_completion_tokens:7.1f} "
        f"{c.finishes:>15} {c.server_cpu:7.2f} {c.client_cpu:5.2f} {c.other_cpu:5.2f} "
        f"{c.cut:4} {sum(c.errors.values()):6}",
        flush=True,
    )
    for error, n in c.errors.most_common(3):
        print(f"    {n} x {error}")


def rounded(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def goal(ok: bool) -> str:
    return "yes" if ok else "NO"


def report(
    cells: list[Cell],
    args: argparse.Namespace,
    rest_ratio: float = float("nan"),
    loop_gain: float = float("nan"),
) -> dict[str, float | None]:
    top = 32 if 32 in args.concurrency else max(args.concurrency)
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        groups.setdefault((cell.setting, cell.concurrency), []).append(cell)
    by = {key: merge(group) for key, group in groups.items()}
    batched, single = by[("batched", top)], by[("batch 1", top)]
    gain = ratio(batched.tokens_per_s, single.tokens_per_s)
    p50, p99 = batched.ttft_ms(50), batched.ttft_ms(99)
    int8 = by.get(("int8 wo", top))
    int8_ratio = ratio(int8.tokens_per_s, batched.tokens_per_s) if int8 else float("nan")
    print()
    print(f"{'figure (concurrency ' + str(top) + ')':44} {'measured':>10} {'goal':>10} {'met':>4}")
    print(
        f"{'batching gain, tokens/s batched / batch 1':44} {gain:10.2f} {'>= 12':>10} "
        f"{goal(gain >= GOAL_GAIN):>4}"
    )
    print(
        f"{'time to first token p50, ms (batched)':44} {p50:10.1f} {'< 100':>10} "
        f"{goal(p50 < GOAL_TTFT_P50_MS):>4}"
    )
    print(
        f"{'time to first token p99, ms (batched)':44} {p99:10.1f} {'< 500':>10} "
        f"{goal(p99 < GOAL_TTFT_P99_MS):>4}"
    )
    print(f"{'int8 (weight-only) / fp32 tokens/s':44} {int8_ratio:10.3f} {'(report)':>10}")
    share = batched.cached_share
    print(f"{'prompt tokens found in the prefix cache':44} {share:10.1%} {'(report)':>10}")
    print(f"{'batching gain of the decode loop alone':44} {loop_gain:10.2f} {'(report)':>10}")
    cpu_gain = ratio(batched.tokens_per_cpu_s, single.tokens_per_cpu_s)
    print(f"{'batching gain per server CPU-second':44} {cpu_gain:10.2f} {'(report)':>10}")
    print(
        f"{'tokens per server CPU-second (batched)':44} {batched.tokens_per_cpu_s:10.0f} "
        f"{'(report)':>10}"
    )
    if int8:
        cpu_int8 = ratio(int8.tokens_per_cpu_s, batched.tokens_per_cpu_s)
        print(
            f"{'int8 (weight-only) / fp32 per server CPU-s':44} {cpu_int8:10.3f} {'(report)':>10}"
        )
    dyn = by.get(("int8 dyn", top))
    if dyn:
        dyn_ratio = ratio(dyn.tokens_per_s, batched.tokens_per_s)
        print(
            f"{'int8 (dynamic activations) / fp32 tokens/s':44} {dyn_ratio:10.3f} {'(report)':>10}"
        )
    short = [c for c in cells if c.mean_completion_tokens < args.max_tokens - 0.5]
    if short:
        print(
            f"note: some replies stopped before {args.max_tokens} tokens (end of text); "
            "tokens/s counts the tokens produced"
        )
    other = sum(c.other_cpu for c in cells) / len(cells)
    if other > 0.25:
        print(
            f"warning: other processes used {other:.2f} CPU-s per s on average ({os.cpu_count()} "
            "cores): the rows are skewed by how much of the machine the server had; the "
            "per-CPU-second figures are steadier"
        )
    if any(c.errors for c in cells):
        print("warning: some requests failed (see the errors column)")
    figures = {
        "batching_gain_c32": rounded(gain, 3),
        "ttft_p50_ms_c32": rounded(p50, 2),
        "ttft_p99_ms_c32": rounded(p99, 2),
        "tokens_per_server_cpu_s_c32": rounded(batched.tokens_per_cpu_s, 1),
        "int8_tokens_per_s_ratio": rounded(int8_ratio, 3),
        "rest_vs_grpc_tokens_per_s_ratio": rounded(rest_ratio, 3),
        "decode_loop_gain": rounded(loop_gain, 2),
    }
    c64 = by.get(("batched", 64))
    if c64 is not None:
        figures.update(gpu_figures(c64))
    return figures


def gpu_figures(c64: Cell) -> dict[str, float | None]:
    """The GPU goals of issue 18, batched at concurrency 64 (printed and returned)."""
    tokens, requests, p99 = c64.tokens_per_s, c64.requests_per_s, c64.ttft_ms(99)
    print(
        f"{'tokens/s, batched, concurrency 64':44} {tokens:10.0f} {'>= 12000':>10} "
        f"{goal(tokens >= GOAL_TOKENS_PER_S_C64):>4}"
    )
    print(
        f"{'requests/s, batched, concurrency 64':44} {requests:10.0f} {'>= 1200':>10} "
        f"{goal(requests >= GOAL_REQUESTS_PER_S_C64):>4}"
    )
    print(
        f"{'time to first token p99, ms, concurrency 64':44} {p99:10.1f} {'< 500':>10} "
        f"{goal(p99 < GOAL_TTFT_P99_MS):>4}"
    )
    return {
        "tokens_per_s_c64": rounded(tokens, 1),
        "requests_per_s_c64": rounded(requests, 2),
        "ttft_p99_ms": rounded(p99, 2),
    }
