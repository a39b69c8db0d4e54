"""`gantry loadtest`: load-test a gRPC or OpenAI-compatible HTTP endpoint from the CLI, and
`gantry loadtest compare A.json B.json`. Needs no cluster file. `--sweep` searches the
highest open-loop rate whose SLOs hold (console.loadtest.sweep) and reports the curve.

Exit status: 0 after a full run, 130 after Ctrl-C (the partial report is still printed and
saved), 2 on bad input or an unusable target (one line on stderr, before the run starts),
1 when a --csv or --html file could not be written (the report is still printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from console.loadtest.config import LoadTestConfig, LoadTestError, parse_metadata, validate
from console.loadtest.schedule import parse_duration, parse_rate

EXIT_INTERRUPTED = 130


def add_loadtest_verb(verbs: Any) -> argparse.ArgumentParser:
    lt: argparse.ArgumentParser = verbs.add_parser(
        "loadtest",
        help="load-test a gRPC or OpenAI-compatible HTTP endpoint (no cluster needed unless "
        "--from-nodes)",
        description="Open loop (--rate, --schedule) or closed loop (--concurrency) load "
        "against the Gantry inference endpoint, any reflected gRPC method, or an "
        "OpenAI-compatible /v1/completions or /v1/chat/completions URL. "
        "`gantry loadtest compare A.json B.json` sets two reports side by side.",
    )
    actions = lt.add_subparsers(dest="loadtest_action", metavar="compare")
    cmp = actions.add_parser("compare", help="two saved reports side by side")
    cmp.add_argument("a", type=Path, metavar="A.json")
    cmp.add_argument("b", type=Path, metavar="B.json")
    cmp.add_argument("--json", action="store_true", help="print JSON")
    cmp.add_argument("--html", type=Path, default=None, metavar="FILE", help="an HTML report")
    # Numbers are taken as text and checked here, so a bad one is a one-line error.
    add = lt.add_argument
    add("--target", default="", metavar="HOST:PORT|URL", help="gRPC HOST:PORT or http(s) URL")
    add("--method", default="", metavar="pkg.Service/Method", help="via server reflection")
    add(
        "--data",
        default="",
        metavar="JSON|@FILE",
        help="the request for --method (HTTP: extra body); @FILE or @- reads it",
    )
    add(
        "--prompts",
        type=Path,
        default=None,
        metavar="FILE",
        help='JSONL or a JSON array: "prompt"/"text", chat "messages", ShareGPT '
        '"conversations" or Alpaca "instruction" records',
    )
    add("--max-tokens", default="32", metavar="N")
    add(
        "--ignore-eos",
        action="store_true",
        help="decode --max-tokens every time, past end-of-sequence (HTTP: vLLM's ignore_eos)",
    )
    add("--model", default="", help="HTTP: the body's model (default: the server's first)")
    add("--rate", default=None, metavar="R", help="open loop: requests/s")
    add("--arrival", default="constant", metavar="constant|poisson")
    add("--concurrency", default=None, metavar="N", help="closed loop: requests in flight")
    add("--schedule", default="", metavar="S", help="open loop steps: 100:30s,ramp:400:60s")
    add("--duration", default=None, metavar="D", help="measured time, e.g. 30s (default 10s)")
    add("--requests", default=None, metavar="N", help="measured requests")
    add("--warmup", default="0", metavar="D", help="excluded from the results")
    add("--workers", default="1", metavar="N", help="processes, each with its own loop")
    add("--timeout", default="30s", metavar="D", help="per request")
    add("--slo-ttft-ms", default=None, metavar="MS")
    add("--slo-latency-ms", default=None, metavar="MS")
    add("--seed", default=None, metavar="N", help="for Poisson arrivals")
    add("--token-file", type=Path, default=argparse.SUPPRESS, help="bearer token")
    add(
        "--sweep",
        action="store_true",
        help="search the highest open-loop rate whose SLOs hold (give --slo-ttft-ms and/or "
        "--slo-latency-ms; --duration is each step's)",
    )
    add("--proto", type=Path, action="append", default=[], metavar="FILE", help="no reflection")
    add("-I", "--import-path", type=Path, action="append", default=[], metavar="DIR")
    add("--metadata", action="append", default=[], metavar="K=V", help="sent with each request")
    add("--tls-ca", type=Path, default=None, metavar="PEM", help="verify the server with it")
    add("--tls-cert", type=Path, default=None, metavar="PEM", help="client certificate (mTLS)")
    add("--tls-key", type=Path, default=None, metavar="PEM", help="client key (mTLS)")
    add("--insecure", action="store_true", help="TLS without verifying the server")
    add("--from-nodes", default="", metavar="A,B", help="agents that run the load workers")
    add("--cluster", type=Path, default=None, metavar="FILE", help="for --from-nodes")
    add("--csv", type=Path, default=None, metavar="FILE", help="every interval, as CSV")
    add("--html", type=Path, default=None, metavar="FILE", help="a self-contained HTML report")
    add("--json", action="store_true", help="print the report as JSON")
    add("--out", type=Path, default=None, metavar="FILE", help="write the JSON report there")
    add("--no-save", action="store_true", help="do not keep the report in .gantry/loadtests/")
    add("--quiet", action="store_true", help="no progress line")
    return lt


def _number(flag: str, text: str | None, kind: type[int] | type[float]) -> Any:
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise LoadTestError(f"{flag} {text!r}: not {what}") from None


def _duration(flag: str, text: str | None, allow_zero: bool = False) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text, allow_zero)
    except ValueError as exc:
        raise LoadTestError(f"{flag} {text!r}: {exc}") from None


def _data(text: str) -> str:
    """--data as given, or read from @FILE (@-: standard input): a request too long for a
    command line (a tensor for Triton's ModelInfer is megabytes of JSON)."""
    if not text.startswith("@"):
        return text
    try:
        return sys.stdin.read() if text == "@-" else Path(text[1:]).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise LoadTestError(f"--data {text}: {reason}") from None


def config_from_args(args: argparse.Namespace) -> LoadTestConfig:
    """LoadTestError on the first bad value, naming the flag."""
    rate = None
    if args.rate is not None:
        try:
            rate = parse_rate(args.rate)
        except ValueError as exc:
            raise LoadTestError(f"--rate {args.rate!r}: {exc}") from None
    return LoadTestConfig(
        target=args.target,
        method=args.method,
        data=_data(args.data),
        prompts=args.prompts,
        max_tokens=_number("--max-tokens", args.max_tokens, int),
        rate=rate,
        arrival=args.arrival,
        concurrency=_number("--concurrency", args.concurrency, int),
        schedule=args.schedule,
        duration_s=_duration("--duration", args.duration),
        requests=_number("--requests", args.requests, int),
        warmup_s=_duration("--warmup", args.warmup, allow_zero=True) or 0.0,
        workers=_number("--workers", args.workers, int),
        slo_ttft_ms=_number("--slo-ttft-ms", args.slo_ttft_ms, float),
        slo_latency_ms=_number("--slo-latency-ms", args.slo_latency_ms, float),
        token_file=getattr(args, "token_file", None),
        model=args.model,
        timeout_s=_duration("--timeout", args.timeout) or 30.0,
        seed=_number("--seed", args.seed, int),
        ignore_eos=args.ignore_eos,
        sweep=args.sweep,
        proto_files=tuple(args.proto),
        import_paths=tuple(args.import_path),
        metadata=parse_metadata(args.metadata),
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure=args.insecure,
        from_nodes=tuple(n.strip() for n in args.from_nodes.split(",") if n.strip()),
        cluster=args.cluster,
    )


def _fail(message: str) -> int:
    print(f"gantry: {message}", file=sys.stderr)
    return 2


def run_loadtest_verb(args: argparse.Namespace) -> int:
    if args.loadtest_action == "compare":
        return _compare(args)
    try:
        config = config_from_args(args)
        validate(config)
    except LoadTestError as exc:
        return _fail(str(exc))
    try:
        return asyncio.run(_run(config, args))
    except KeyboardInterrupt:  # a second Ctrl-C
        return EXIT_INTERRUPTED


class _ProgressLine:
    """A line rewritten in place on a terminal; elsewhere one line a second. Each warning
    is printed once, on a line of its own, when it first appears."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last_printed = -1.0
        self.width = 0
        self.warned: set[str] = set()

    def __call__(self, progress: Any) -> None:
        for note in progress.notes:
            if note not in self.warned:
                self.warned.add(note)
                start = "\r" + " " * self.width + "\r" if self.tty else ""
                self.stream.write(f"{start}gantry: warning: {note}\n")
                self.width = 0
        line = progress.line()
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
            if progress.done:
                self.stream.write("\n")
        elif progress.done or progress.elapsed_s - self.last_printed >= 1.0:
            self.stream.write(line + "\n")
            self.last_printed = progress.elapsed_s
        self.stream.flush()


async def _run(config: LoadTestConfig, args: argparse.Namespace) -> int:
    from console.loadtest.engine import tune_gc
    from console.loadtest.runner import run_loadtest
    from console.loadtest.store import save_report, write_report

    tune_gc()  # this process only runs the test

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def interrupted() -> None:
        print("\ngantry: stopping; Ctrl-C again to abandon the report", file=sys.stderr)
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # the next one interrupts for real

    loop.add_signal_handler(signal.SIGINT, interrupted)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    nodes = None
    try:
        if config.from_nodes:
            from console.net.loadtest_nodes import open_node_tasks

            nodes = open_node_tasks(config)
        if config.sweep:
            return await _sweep(config, args, stop, nodes)
        # Even one worker runs in a child process: drawing progress here then never
        # delays a send.
        report = await run_loadtest(
            config,
            on_progress=None if args.quiet else _ProgressLine(sys.stderr),
            stop=stop,
            in_process=False,
            nodes=nodes,
        )
    except LoadTestError as exc:
        return _fail(str(exc))
    finally:
        if nodes is not None:
            await nodes.close()
        loop.remove_signal_handler(signal.SIGTERM)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_report(report, args.out)
        print(f"report: {args.out}", file=sys.stderr)
    elif not args.no_save:
        print(f"report: {save_report(report)}", file=sys.stderr)
    written = _write_files(report, args, None)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.to_table())
    return EXIT_INTERRUPTED if stop.is_set() else written


async def _sweep(
    config: LoadTestConfig, args: argparse.Namespace, stop: asyncio.Event, nodes: Any = None
) -> int:
    """`--sweep`: the capacity search, each step's line on stderr as it finishes."""
    from console.loadtest.sweep import STEP_HEADER, Step, step_row
    from console.loadtest.sweep_run import run_sweep, save_sweep, write_sweep

    line = [_ProgressLine(sys.stderr)]
    headed: list[bool] = []

    def event(kind: str, value: float) -> None:
        line[0] = _ProgressLine(sys.stderr)  # each run's clock starts at 0
        what = {
            "probe": f"closed-loop probe, {value:g} in flight",
            "ceiling": f"ceiling {value:.1f}/s answered (closed loop)",
        }.get(kind, f"step at {value:.1f}/s")
        print(f"sweep: {what}", file=sys.stderr)

    def finished(step: Step) -> None:
        if not headed:
            headed.append(True)
            print(f"sweep: {STEP_HEADER}", file=sys.stderr)
        print(f"sweep: {step_row(step)}", file=sys.stderr)
        if step.why:
            print(f"sweep: {step.why}", file=sys.stderr)

    sweep = await run_sweep(
        config,
        on_step=None if args.quiet else finished,
        on_progress=None if args.quiet else (lambda p: line[0](p)),
        stop=stop,
        on_event=None if args.quiet else event,
        in_process=False,
        nodes=nodes,
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_sweep(sweep, args.out)
        print(f"report: {args.out}", file=sys.stderr)
    elif not args.no_save:
        print(f"report: {save_sweep(sweep)}", file=sys.stderr)
    chosen = sweep.chosen_report()
    written = 0
    if chosen is not None:
        written = _write_files(chosen, args, sweep.to_json())
    elif args.csv is not None or args.html is not None:
        print("gantry: warning: no step ran, so no --csv or --html was written", file=sys.stderr)
    if args.json:
        print(json.dumps(sweep.to_json(), indent=2))
    else:
        print(sweep.to_table())
    return EXIT_INTERRUPTED if stop.is_set() else written


def _write_files(report: Any, args: argparse.Namespace, sweep: dict[str, Any] | None) -> int:
    """--csv and --html (with --sweep: of the run at the rate found, with the curve);
    1 when one could not be written (said in one line), else 0."""
    if args.csv is None and args.html is None:
        return 0
    from console.loadtest import report_files

    status = 0
    for path, kind in ((args.csv, "csv"), (args.html, "html")):
        if path is None:
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "csv":
                report_files.write_csv(report, path)
            else:
                report_files.write_html(report, path, sweep=sweep)
        except OSError as exc:
            print(f"gantry: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        print(f"report: {path}", file=sys.stderr)
    return status


def _compare(args: argparse.Namespace) -> int:
    from console.loadtest.compare import compare, compare_json, format_compare, incomparable
    from console.loadtest.store import load_report

    try:
        a, b = load_report(args.a), load_report(args.b)
    except ValueError as exc:
        return _fail(str(exc))
    rows = compare(a, b)
    warnings = incomparable(a, b)
    if args.html is not None:
        from console.loadtest.report_files import write_compare_html

        try:
            args.html.parent.mkdir(parents=True, exist_ok=True)
            write_compare_html(a, b, str(args.a), str(args.b), args.html)
        except OSError as exc:
            return _fail(f"cannot write {args.html}: {exc.strerror or exc}")
        print(f"report: {args.html}", file=sys.stderr)
    if args.json:
        out = {"a": str(args.a), "b": str(args.b), "warnings": warnings}
        print(json.dumps({**out, "rows": compare_json(rows)}, indent=2))
    else:
        print(format_compare(rows, str(args.a), str(args.b), warnings))
    return 0
