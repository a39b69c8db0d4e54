"""A method's request and response types from .proto files (--proto FILE, -I DIR), for
servers without reflection.

grpcio-tools' protoc compiles the files, with everything they import, into a
FileDescriptorSet; it runs in a child process so that its messages (it writes them to
the process's stderr) come back as text, the first error becoming the one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.message import DecodeError

from console.loadtest.config import LoadTestError
from console.loadtest.reflection import MethodInfo, method_in_pool

PROTOC_TIMEOUT_S = 60.0


def import_paths_for(files: tuple[Path, ...], import_paths: tuple[Path, ...]) -> list[Path]:
    """-I DIR as given, then the folder of each file that is under none of them (protoc
    wants every file inside an import path)."""
    paths = [p.resolve() for p in import_paths]
    for file in files:
        folder = file.resolve().parent
        if not any(folder.is_relative_to(p) for p in paths):
            paths.append(folder)
    return paths


def protoc_args(files: tuple[Path, ...], import_paths: tuple[Path, ...], out: Path) -> list[str]:
    args = [f"--proto_path={p}" for p in import_paths_for(files, import_paths)]
    args += [f"--descriptor_set_out={out}", "--include_imports"]
    return args + [str(f.resolve()) for f in files]


# protoc's own log lines (absl): "W0000 00:00:1733555555.123456   42 parser.cc:659] No edition
# or syntax specified for the proto file: x.proto. Please use 'syntax = "proto2";' ...".
_ABSL_LOG = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_NOT_FOUND = re.compile(r"^(?P<file>\S+): File not found\.$")
_IMPORTED = re.compile(r'^(?P<at>\S+:\d+):\d+: Import "(?P<file>[^"]+)" was not found')


def first_error(stderr: str) -> str:
    """protoc's first error line (its warnings and log lines skipped); for imports it could
    not find, every one of them, where the first was imported, and what to give."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [
        line for line in lines if "warning:" not in line.lower() and not _ABSL_LOG.match(line)
    ]
    missing = [m["file"] for line in errors if (m := _NOT_FOUND.match(line))]
    if missing:
        where = next((m["at"] for line in errors if (m := _IMPORTED.match(line))), "")
        return (
            f"cannot find {', '.join(dict.fromkeys(missing))}"
            + (f" (imported at {where})" if where else "")
            + "; give -I DIR, the folder that import path is relative to"
        )
    return (errors or lines or ["protoc failed with no message"])[0]


async def compile_protos(
    files: tuple[Path, ...], import_paths: tuple[Path, ...]
) -> descriptor_pb2.FileDescriptorSet:
    """The files and all they import, compiled; LoadTestError with protoc's first error."""
    if importlib.util.find_spec("grpc_tools") is None:
        raise LoadTestError("--proto needs grpcio-tools: pip install grpcio-tools")
    with tempfile.TemporaryDirectory(prefix="gantry-proto-") as folder:
        out = Path(folder) / "descriptors.pb"
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            *protoc_args(files, import_paths, out),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), PROTOC_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise LoadTestError(
                f"--proto: protoc did not finish in {PROTOC_TIMEOUT_S:g} s"
            ) from None
        if proc.returncode != 0:
            raise LoadTestError(f"--proto: {first_error(stderr.decode(errors='replace'))}")
        try:
            return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
        except (OSError, DecodeError) as exc:
            raise LoadTestError(f"--proto: protoc wrote no usable descriptors ({exc})") from None


async def method_from_protos(
    files: tuple[Path, ...], import_paths: tuple[Path, ...], name: str
) -> MethodInfo:
    """The method `name` ("pkg.Service/Method") as the files define it."""
    descriptors = await compile_protos(files, import_paths)
    return method_in_pool(descriptors.file, name, "the --proto files")
