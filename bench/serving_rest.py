"""bench/serving.py's REST-vs-gRPC figure: the load tester (console.loadtest, what `gantry
loadtest` runs) against one server's two endpoints, the same engine behind both.

At concurrency 32 (closed loop), streamed, the same prompts in the same order, greedy
(`temperature: 0` in the HTTP body; gRPC's default), `ignore_eos` on both so that every
reply is max_tokens long: four runs in the order gRPC, HTTP, HTTP, gRPC, so that a drift in
other load on the machine weighs on both sides. Tokens/s is the load tester's answers
per second times max_tokens: with ignore_eos every answer is max_tokens long (the server's
count), while the load tester's own count of streamed HTTP tokens sees one per event with
text, and a token that ends inside a UTF-8 character (common with the demo's random
weights) arrives with the next one. The ratio is HTTP's over gRPC's, each the mean of its
two runs. Goal: >= 0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

from console.loadtest.config import LoadTestConfig
from console.loadtest.report import Report
from console.loadtest.runner import run_loadtest

CONCURRENCY = 32
GOAL_RATIO = 0.9
ORDER = ("grpc", "http", "http", "grpc")


@dataclass
class RestVsGrpc:
    rates: dict[str, list[float]]  # tokens/s of each run
    errors: dict[str, int]

    def tokens_per_s(self, api: str) -> float:
        runs = self.rates[api]
        return sum(runs) / len(runs) if runs else float("nan")

    @property
    def ratio(self) -> float:
        grpc = self.tokens_per_s("grpc")
        return self.tokens_per_s("http") / grpc if grpc > 0 else float("nan")


def config(
    api: str,
    address: str,
    http_address: str,
    prompts: Path,
    token_file: Path,
    args: argparse.Namespace,
) -> LoadTestConfig:
    http = api == "http"
    return LoadTestConfig(
        f"http://{http_address}/v1/completions" if http else address,
        data=json.dumps({"temperature": 0}) if http else "",
        prompts=prompts,
        max_tokens=args.max_tokens,
        concurrency=CONCURRENCY,
        duration_s=args.seconds,
        warmup_s=args.warmup_s,
        token_file=token_file,
        timeout_s=120.0,
        ignore_eos=True,
    )


def rest_vs_grpc(
    address: str,
    http_address: str,
    prompts: list[str],
    token_file: Path,
    work_dir: Path,
    args: argparse.Namespace,
) -> RestVsGrpc:
    """Runs the four load tests against the batched server; prints a row for each."""
    prompts_file = work_dir / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    result = RestVsGrpc({"grpc": [], "http": []}, {"grpc": 0, "http": 0})
    print()
    print(f"REST vs gRPC: the load tester, concurrency {CONCURRENCY}, streamed, same server")
    for api in ORDER:
        cfg = config(api, address, http_address, prompts_file, token_file, args)
        report: Report = asyncio.run(run_loadtest(cfg))
        rate = report.throughput_rps * args.max_tokens
        result.rates[api].append(rate)
        result.errors[api] += report.error_count
        finishes = ", ".join(f"{k}:{v}" for k, v in sorted(report.finishes.items()))
        print(
            f"  {api:<5} {rate:9.1f} tok/s  {report.throughput_rps:7.2f} req/s  "
            f"(streamed tokens counted {report.tokens_per_s:.1f}/s)  ok {report.ok}  "
            f"{finishes}  errors {report.error_count}",
            flush=True,
        )
    met = "yes" if result.ratio >= GOAL_RATIO else "NO"
    print(f"  HTTP / gRPC tokens/s {result.ratio:.3f} (goal >= {GOAL_RATIO}: {met})")
    return result
