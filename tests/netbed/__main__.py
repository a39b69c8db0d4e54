"""`make netbed`: bring a 3-host bed up, print how to reach each host, wait for Ctrl-C,
tear it down. `python -m tests.netbed [N]` for N hosts."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from tests.netbed.bed import NetbedError, start_bed, teardown


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    root = Path(tempfile.mkdtemp(prefix="gantry-netbed-"))
    try:
        bed = start_bed(root, count)
    except NetbedError as exc:
        print(f"netbed: {exc}", file=sys.stderr)
        return 1
    try:
        print(f"netbed up under {root} (console side {bed.plan.console_address})")
        for host in bed.hosts:
            print(
                f"  {host.name}: {host.address}  ns {host.ns}  agent {host.agent_target}"
                f"  shell: ip netns exec {host.ns} bash"
            )
        print(f"  gantry --cluster {bed.cluster_file} status")
        print(f"  ssh -F {bed.ssh_config} -o UserKnownHostsFile={bed.known_hosts} node-1")
        print("Ctrl-C tears it down.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        teardown(bed)
        shutil.rmtree(root, ignore_errors=True)
        print("netbed torn down")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GANTRY_WARM_OPS", "0")
    sys.exit(main())
