"""A stand-in training script whose steps cross the network: at each step's end every rank
meets the others in a TCP barrier at MASTER_ADDR:MASTER_PORT (rank 0 serves it), waiting at
most GANTRY_COLLECTIVE_TIMEOUT_S, as NCCL's watchdog would; a rank that waits longer exits 1
with "collective timed out". A rank whose peer went away says so as gloo's TCP transport
does ("[gloo/transport/tcp/pair.cc] Connection closed by peer [ADDR]:PORT", or "Read error
[ADDR]:PORT: Connection reset by peer"), as a DeepSpeed rank on gloo prints it. Every
--save-every steps each rank writes CKPT/step{N}/rank{R}.json, the ranks meet again, and
rank 0 points CKPT/latest at it. Prints ``resumed at N`` at start and ``step N`` per step."""

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


# Where gloo's TCP pair reports a peer gone (torch's third_party/gloo, as its errors print).
PAIR = "[../third_party/gloo/gloo/transport/tcp/pair.cc:598]"


class CollectiveTimeout(Exception):
    pass


def _peer_name(conn: socket.socket) -> str:
    host, port = conn.getpeername()[:2]
    return f"[{host}]:{port}"


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
            self.names = [_peer_name(c) for c in self.peers]
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
        self.names = [_peer_name(conn)]

    def meet(self, step: int) -> None:
        line = f"{step}\n".encode()
        peer = self.names[0]
        try:
            if self.rank == 0:
                for f, peer in zip(self.files, self.names, strict=True):
                    if not f.readline():
                        raise CollectiveTimeout(f"{PAIR} Connection closed by peer {peer}")
                for i, f in enumerate(self.files):
                    peer = self.names[i]
                    f.write(line)
                    f.flush()
            else:
                f = self.files[0]
                f.write(line)
                f.flush()
                if not f.readline():
                    raise CollectiveTimeout(f"{PAIR} Connection closed by peer {peer}")
        except TimeoutError:
            raise CollectiveTimeout(
                f"collective timed out after {self.timeout_s:g}s at step {step}"
            ) from None
        except OSError as exc:  # a rank that timed out first closed its connection
            why = exc.strerror or str(exc)
            raise CollectiveTimeout(f"{PAIR} Read error {peer}: {why}") from None


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
