"""What Gantry adds to an unchanged training script's Python, from its start-up hook.

The agent puts ``agent/rank/bootstrap`` on a rank's ``PYTHONPATH``; its
``sitecustomize`` loads this file by path (under a private module name, so nothing of
Gantry's appears on the script's ``sys.path``) and calls ``install()`` in the first
Python process of the rank. Then, whatever the script is:

- heartbeats go to ``$GANTRY_METRICS_FILE`` from the start, so a rank that prints nothing
  (every rank but 0 of a Hugging Face script) is still seen alive, and a frozen one is not;
- SIGUSR1 prints every thread's stack (the agent asks for them when a rank hangs);
- its phase is recorded as it goes: importing; building DeepSpeed's ops
  (``OpBuilder.load``); joining the process group (``init_process_group``); loading a
  checkpoint (DeepSpeed's ``load_checkpoint``, the ``Trainer``'s ``_load_from_checkpoint``);
  first step (set up, waiting for the first optimizer step); training (torch's global
  optimizer step hook fired; it then counts the steps, so that a heartbeat says whether
  the rank moved on: see agent.rank.report's ``Reporter.heartbeat``).

Hooks are applied when those modules are first imported (a ``sys.meta_path`` finder that
wraps the real loader), never by importing anything the script did not. Every hook is
best effort: a failure in Gantry's code never reaches the script. ``GANTRY_INSTRUMENT=0``
in the job's env turns all of it off.

Standard library only (the script's own interpreter may have nothing else of Gantry's).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

_INSTALLED = re.compile(r"[/\\](?:site|dist)-packages[/\\]")
IMPORTS_ENV = "GANTRY_IMPORTS_FILE"  # where the modules imported by the first step go
OWNER_ENV = "GANTRY_RANK_HOOKS_PID"  # set in the first process: its children stay quiet
SWITCH_ENV = "GANTRY_INSTRUMENT"
HEARTBEAT_PID_ENV = "GANTRY_HEARTBEAT_PID"  # agent.report starts no second heartbeat thread

IMPORTING = "importing"
BUILDING_OPS = "building_ops"
JOINING = "joining"
LOADING_CHECKPOINT = "loading_checkpoint"
FIRST_STEP = "first_step"
TRAINING = "training"


class PhaseLog:
    """The rank's current phase, written as a record each time it changes; ``tick`` is
    called at each optimizer step (the heartbeat says the rank moved on)."""

    def __init__(
        self,
        write: Callable[[str], None],
        tick: Callable[[], None] = lambda: None,
        note: Callable[..., None] = lambda kind, **fields: None,
    ) -> None:
        self._write = write
        self.tick = tick
        self.note = note  # another record: note(kind, **fields)
        self._lock = threading.Lock()
        self.current = ""

    def set(self, phase: str) -> None:
        with self._lock:
            if phase == self.current or self.current == TRAINING:
                return
            self.current = phase
        with contextlib.suppress(Exception):
            self._write(phase)

    def during(
        self, phase: str, then: str | None = None, stay_after: tuple[str, ...] = ()
    ) -> Callable[[Any], Any]:
        """A decorator: ``phase`` while the call runs, ``then`` (default: the phase before
        it) afterwards; after a call made in one of the ``stay_after`` phases, ``phase``
        stays until the next one begins."""

        def wrap(func: Any) -> Any:
            if getattr(func, "__gantry_phase__", None):
                return func

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                before = self.current
                self.set(phase)
                try:
                    return func(*args, **kwargs)
                finally:
                    if before not in stay_after:
                        self.set(then or before)

            wrapper.__gantry_phase__ = phase  # type: ignore[attr-defined]
            return wrapper

        return wrap


def _patch(owner: object, name: str, decorate: Callable[[Any], Any]) -> None:
    with contextlib.suppress(Exception):
        original = getattr(owner, name)
        setattr(owner, name, decorate(original))


def _hook_torch_distributed(module: ModuleType, phases: PhaseLog) -> None:
    c10d = sys.modules.get("torch.distributed.distributed_c10d")
    original = getattr(c10d, "init_process_group", None) if c10d is not None else None
    if original is None:
        return
    wrapped = phases.during(JOINING, then=FIRST_STEP)(original)
    for owner in (c10d, module):
        with contextlib.suppress(Exception):
            if getattr(owner, "init_process_group", None) is original:
                owner.init_process_group = wrapped  # type: ignore[union-attr]


def imported_modules(roots: Sequence[str]) -> list[str]:
    """The modules this process imported, in import order, but the script's own (under
    ``roots``) and Gantry's: what a standby for the next attempt imports ahead."""
    own = tuple(os.path.join(os.path.abspath(r), "") for r in roots if r)
    names = []
    for name, module in list(sys.modules.items()):
        if name in ("__main__", "__mp_main__", "sitecustomize") or name.startswith("_gantry"):
            continue
        path = getattr(module, "__file__", None)
        # The job's own code stays out; a virtualenv inside the job's folder is not its code.
        if (
            isinstance(path, str)
            and own
            and os.path.abspath(path).startswith(own)
            and not _INSTALLED.search(path)
        ):
            continue
        names.append(name)
    return names


def _write_imports(environ: Mapping[str, str]) -> None:
    target = environ.get(IMPORTS_ENV)
    if not target:
        return
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    roots = [os.getcwd(), os.path.dirname(script) if isinstance(script, str) else ""]
    tmp = f"{target}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(imported_modules(roots), handle)
    os.replace(tmp, target)


def _hook_optimizer(module: ModuleType, phases: PhaseLog) -> None:
    register = getattr(module, "register_optimizer_step_post_hook", None)
    if register is None:
        return
    first: list[bool] = [True]

    def stepped(optimizer: object, args: object, kwargs: object) -> None:
        phases.tick()  # every step: one call and an increment
        if first:
            first.clear()
            with contextlib.suppress(Exception):
                _write_imports(os.environ)  # before the phase: the agent reads it on TRAINING
            phases.set(TRAINING)

    with contextlib.suppress(Exception):
        register(stepped)


def _hook_op_builder(module: ModuleType, phases: PhaseLog) -> None:
    builder = getattr(module, "OpBuilder", None)
    if builder is not None:
        # Built while the script starts (DeepSpeed's comm op, before joining): no step back
        # to "importing" after it; built later (an optimizer's op): back to where it was.
        _patch(builder, "load", phases.during(BUILDING_OPS, stay_after=(IMPORTING,)))


def _hook_deepspeed_engine(module: ModuleType, phases: PhaseLog) -> None:
    engine = getattr(module, "DeepSpeedEngine", None)
    if engine is not None:
        _patch(engine, "load_checkpoint", phases.during(LOADING_CHECKPOINT))


def _hook_trainer(module: ModuleType, phases: PhaseLog) -> None:
    trainer = getattr(module, "Trainer", None)
    if trainer is not None:
        _patch(trainer, "_load_from_checkpoint", phases.during(LOADING_CHECKPOINT))
        _patch(trainer, "__init__", _noting_settings(phases))


def _noting_settings(phases: PhaseLog) -> Callable[[Any], Any]:
    """Trainer.__init__, then a record of its logging settings: where its log and
    evaluation dicts fall when no progress bar numbers them (disable_tqdm), and its
    max_steps, set in the script's code."""

    def wrap(init: Any) -> Any:
        @functools.wraps(init)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            with contextlib.suppress(Exception):
                settings = self.args
                strategy = getattr(settings, "eval_strategy", "no")
                evaluating = str(getattr(strategy, "value", strategy)) == "steps"
                every = settings.eval_steps or settings.logging_steps if evaluating else None
                phases.note(
                    "trainer",
                    logging_steps=float(settings.logging_steps),
                    logging_first_step=bool(settings.logging_first_step),
                    eval_steps=float(every) if every else None,
                    max_steps=int(settings.max_steps) if settings.max_steps > 0 else None,
                )

        return wrapper

    return wrap


HOOKS: dict[str, Callable[[ModuleType, PhaseLog], None]] = {
    "torch.distributed": _hook_torch_distributed,
    "torch.optim.optimizer": _hook_optimizer,
    "deepspeed.ops.op_builder.builder": _hook_op_builder,
    "deepspeed.runtime.engine": _hook_deepspeed_engine,
    "transformers.trainer": _hook_trainer,
}


class _PatchingLoader(importlib.abc.Loader):
    """The real loader, then our hook on the fresh module."""

    def __init__(self, real: importlib.abc.Loader, hook: Callable[[ModuleType], None]) -> None:
        self._real = real
        self._hook = hook

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._real.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._real.exec_module(module)
        with contextlib.suppress(Exception):
            self._hook(module)


class HookFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the modules in ``hooks``, once each."""

    def __init__(self, hooks: dict[str, Callable[[ModuleType], None]]) -> None:
        self._hooks = dict(hooks)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        hook = self._hooks.pop(fullname, None)
        if hook is None:
            return None
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        except Exception:
            return None
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, hook)
        return spec


def _bound(
    hook: Callable[[ModuleType, PhaseLog], None], phases: PhaseLog
) -> Callable[[ModuleType], None]:
    return lambda module: hook(module, phases)


def _load_reporter() -> Any:
    """agent/rank/report.py, loaded by path under a private name."""
    path = Path(__file__).with_name("report.py")
    spec = importlib.util.spec_from_file_location("_gantry_report", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["_gantry_report"] = module
    spec.loader.exec_module(module)
    return module


def install(environ: dict[str, str] | None = None) -> bool:
    """Sets everything up in this process; False when it is not this process's job."""
    env = os.environ if environ is None else environ
    if env.get(SWITCH_ENV, "1") == "0" or not env.get("GANTRY_METRICS_FILE"):
        return False
    if env.get(OWNER_ENV):
        return False  # a child of the rank (a compiler, a data worker): the rank speaks
    env[OWNER_ENV] = str(os.getpid())
    report = _load_reporter()
    report.install_stack_dump()
    reporter = report.Reporter()
    phases = PhaseLog(reporter.phase, reporter.tick, reporter.write)
    phases.set(IMPORTING)
    reporter.start_heartbeat()
    env[HEARTBEAT_PID_ENV] = str(os.getpid())
    hooks = {name: _bound(hook, phases) for name, hook in HOOKS.items()}
    for name in list(hooks):
        module = sys.modules.get(name)
        if module is not None:  # imported before us (rare: by another sitecustomize)
            with contextlib.suppress(Exception):
                hooks.pop(name)(module)
    sys.meta_path.insert(0, HookFinder(hooks))
    return True
