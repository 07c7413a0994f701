"""Start each Flower task in a process forked from a warm parent, not a fresh interpreter.

On Flower's deployment engine every message a SuperNode receives is a task, and Flower's
SuperExec starts each task as a new ``flwr-clientapp`` process (``flwr-serverapp`` on the
SuperLink). That process imports torch, Opacus, Flower and fedmarket before it can answer: seconds
per message, several messages per round. ``serve_tasks`` is the same SuperExec loop (acquire a task
from the Runtime API, start a process that runs Flower's own entry point for it) with one change:
the process is a fork of this one, made after those imports. Each message still runs in its own
process, so no state leaks from one message to the next, but it starts in milliseconds.

The parent only imports; it never runs torch, so forking it is safe (no thread pools yet).
``cold=True`` starts fresh processes exactly as Flower's SuperExec does (the benchmark's baseline,
and the fallback where ``fork`` is unavailable).

This drives Flower's Runtime API (``flwr.supercore``) directly: the pinned flwr 1.41 is required.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from flwr.proto.runtime_pb2 import AcquireTaskRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor, SuperExecAuthHttpInterceptor
from flwr.supercore.protobuf.client import ProtobufClientInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.superexec.plugin import AutoExecPlugin
from flwr.superlink.cli.flwr_serverapp import flwr_serverapp
from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

log = logging.getLogger(__name__)

_ENTRY_POINTS: dict[TaskType, Callable[[], None]] = {
    TaskType.CLIENT_APP: flwr_clientapp,
    TaskType.SERVER_APP: flwr_serverapp,
}
TaskExit = Callable[[int, int], None]
"""Called with (pid, exit status) when a task process ends."""


@dataclass
class ForkExecutor:
    """A SuperExec executor (Flower's ``Executor`` protocol) that forks its task processes."""

    cold: bool = False
    on_exit: TaskExit | None = None
    children: dict[int, subprocess.Popen[bytes] | None] = field(default_factory=dict)

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        return supported_task_types, set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        return None

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        argv = _argv(spec)
        if self.cold or not hasattr(os, "fork"):
            beside = Path(sys.executable).parent / argv[0]  # this environment's command
            child = subprocess.Popen([str(beside) if beside.exists() else argv[0], *argv[1:]])
            self.children[child.pid] = child
            return LaunchResult.accepted()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the task process: run Flower's entry point as its command would
            _run_child(argv, _ENTRY_POINTS[spec.task_type])
        self.children[pid] = None
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap ended task processes (no zombies) and report their exit status."""
        for pid, child in list(self.children.items()):
            if child is not None:
                status = child.poll()
            else:
                done, raw = os.waitpid(pid, os.WNOHANG)
                status = None if done == 0 else os.waitstatus_to_exitcode(raw)
            if status is not None:
                del self.children[pid]
                if self.on_exit is not None:
                    self.on_exit(pid, status)

    def close(self) -> None:
        """Stop task processes still running (the parent is shutting down)."""
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            self.reconcile()
            time.sleep(0.05)


def serve_tasks(
    runtime_address: str,
    *,
    task_types: Iterable[TaskType],
    secret: bytes | None = None,
    root_certificates: str | None = None,
    cold: bool = False,
    should_stop: Callable[[], bool] = lambda: False,
    on_exit: TaskExit | None = None,
    poll_seconds: float = 0.05,
) -> None:
    """Acquire tasks from the Runtime API at ``runtime_address`` and run each in a process
    until ``should_stop()``; ``secret`` is the SuperExec shared secret (``--superexec-auth-
    secret-file`` of the SuperLink or SuperNode), ``root_certificates`` the CA of a TLS Runtime
    API (None: plain HTTP, for a Runtime API bound to loopback)."""
    insecure = root_certificates is None
    executor = ForkExecutor(cold=cold, on_exit=on_exit)
    interceptors: list[ProtobufClientInterceptor] = [
        RuntimeVersionHttpInterceptor(component_name="SuperExec")
    ]
    if secret:
        interceptors.append(
            SuperExecAuthHttpInterceptor(
                master_secret=secret,
                protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"}),
            )
        )
    certificates = None
    if root_certificates is not None:
        with open(root_certificates, "rb") as file:
            certificates = file.read()
    retry = make_simple_http_retry_invoker()
    retry.max_time = 5.0  # then the loop checks should_stop() before trying again
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=interceptors,
        retry_invoker=retry,
    )
    plugin = AutoExecPlugin(
        runtime_api_address=runtime_address,
        insecure=insecure,
        root_certificates_path=root_certificates,
        runtime_dependency_install=False,
        executor=executor,
    )
    wanted = [str(t) for t in task_types]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while not should_stop():
            executor.reconcile()
            try:
                response = client.AcquireTask(AcquireTaskRequest(supported_task_types=wanted))
            except Exception as exc:  # the Runtime API is down for now
                log.debug("Runtime API at %s unreachable: %s", runtime_address, exc)
                time.sleep(1.0)
                continue
            if response.HasField("task") and response.token:
                plugin.launch_task(token=response.token, task=response.task)
                continue  # more may be waiting (one per message)
            time.sleep(poll_seconds)
    finally:
        signal.signal(signal.SIGTERM, previous)
        executor.close()
        client.close()


def _argv(spec: ExecutionSpec) -> list[str]:
    argv = [
        spec.task_type.value,
        "--runtime-api-address",
        spec.runtime_api_address,
        "--token",
        spec.token,
    ]
    if spec.insecure:
        argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        argv += ["--parent-pid", str(spec.parent_pid)]
    return argv


def _run_child(argv: list[str], entry: Callable[[], None]) -> None:
    """Never returns: run ``entry`` with ``argv`` and leave with its exit status."""
    code = 0
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = argv
        entry()
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else 1
    except BaseException:
        log.exception("task process failed")
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
