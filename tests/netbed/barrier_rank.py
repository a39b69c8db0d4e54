"""A stand-in training script whose steps cross the network: at each step's end every rank
meets the others in a TCP barrier at MASTER_ADDR:MASTER_PORT (rank 0 serves it), waiting at
most GANTRY_COLLECTIVE_TIMEOUT_S, as NCCL's watchdog would; a rank that waits longer exits 1
with "collective timed out". Every --save-every steps each rank writes
CKPT/step{N}/rank{R}.json, the ranks meet again, and rank 0 points CKPT/latest at it.
Prints ``resumed at N`` at start and ``step N`` per step."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

from agent.rank.report import Reporter, install_stack_dump

CONNECT_RETRY_S = 0.1
# Joining waits for every rank's start-up too, not only the network.
RENDEZVOUS_MIN_S = 60.0


class CollectiveTimeout(Exception):
    pass


class Barrier:
    """Rank 0 holds one connection per other rank; a meeting is a line each way."""

    def __init__(self, rank: int, world: int, addr: str, port: int, timeout_s: float) -> None:
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.peers: list[socket.socket] = []
        join_s = max(timeout_s, RENDEZVOUS_MIN_S)
        deadline = time.monotonic() + join_s
        if rank == 0:
            server = socket.create_server(("0.0.0.0", port), reuse_port=False)
            server.settimeout(join_s)
            try:
                while len(self.peers) < world - 1:
                    conn, _ = server.accept()
                    conn.settimeout(timeout_s)
                    self.peers.append(conn)
            except TimeoutError:
                raise CollectiveTimeout("rendezvous: not every rank joined") from None
            finally:
                server.close()
            self.files = [c.makefile("rwb") for c in self.peers]
            return
        while True:
            try:
                conn = socket.create_connection((addr, port), timeout=join_s)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise CollectiveTimeout(f"rendezvous: {addr}:{port} unreachable") from None
                time.sleep(CONNECT_RETRY_S)
        conn.settimeout(timeout_s)
        self.peers = [conn]
        self.files = [conn.makefile("rwb")]

    def meet(self, step: int) -> None:
        line = f"{step}\n".encode()
        try:
            if self.rank == 0:
                for f in self.files:
                    if not f.readline():
                        raise CollectiveTimeout(f"a rank left the barrier at step {step}")
                for f in self.files:
                    f.write(line)
                    f.flush()
            else:
                f = self.files[0]
                f.write(line)
                f.flush()
                if not f.readline():
                    raise CollectiveTimeout(f"rank 0 left the barrier at step {step}")
        except TimeoutError:
            raise CollectiveTimeout(
                f"collective timed out after {self.timeout_s:g}s at step {step}"
            ) from None
        except OSError as exc:  # a rank that timed out first closed its connection
            raise CollectiveTimeout(f"a rank left the barrier at step {step}: {exc}") from None


def resumed_step(path: str, rank: int) -> int:
    if not path:
        return 0
    try:
        return int(json.loads((Path(path) / f"rank{rank}.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--step-s", type=float, default=0.1)
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--checkpoint-dir", required=True)
    parser.add_argument("--resume_from_checkpoint", default="")
    parser.add_argument("--deepspeed_config", default="")
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout_s = float(os.environ.get("GANTRY_COLLECTIVE_TIMEOUT_S", "30"))
    root = Path(args.checkpoint_dir)
    install_stack_dump()
    start = resumed_step(args.resume_from_checkpoint, rank)
    print(f"resumed at {start}", flush=True)
    with Reporter() as reporter:
        reporter.start(step=start)
        try:
            barrier = Barrier(
                rank, world, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), timeout_s
            )
            for step in range(start + 1, args.steps + 1):
                time.sleep(args.step_s)
                barrier.meet(step)
                reporter.metrics(step, loss=1.0 / step, step_time_s=args.step_s)
                print(f"step {step}", flush=True)
                if step % args.save_every:
                    continue
                folder = root / f"step{step}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"rank{rank}.json").write_text(json.dumps({"step": step}))
                barrier.meet(step)  # every rank's file is written
                if rank == 0:
                    tmp = root / "latest.tmp"
                    tmp.write_text(folder.name)
                    tmp.replace(root / "latest")
                reporter.checkpoint(step, folder.name, folder)
        except CollectiveTimeout as exc:
            print(f"rank {rank}: collective timed out: {exc}", file=sys.stderr, flush=True)
            sys.exit(1)
        reporter.end()


if __name__ == "__main__":
    main()
