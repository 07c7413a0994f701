"""A real IPFS daemon on loopback for tests and benchmarks: js-ipfs 0.66.1 from ``tests/ipfs``.

js-ipfs serves the same ``/api/v0`` RPC as kubo (none installs offline here). It runs with a
fresh repo, swarm on 127.0.0.1 only, no bootstrap peers, MDNS off: it talks to nobody.
``make test`` installs it (``tests/ipfs/node_modules``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from types import TracebackType

from net import free_port

NODE_DIR = Path(__file__).parent / "ipfs"
JSIPFS = NODE_DIR / "node_modules" / ".bin" / "jsipfs"
READY = "Daemon is ready"


class IpfsDaemon:
    """Start with ``with IpfsDaemon(tmp_dir) as daemon:``; ``daemon.api`` is its RPC multiaddr."""

    def __init__(self, repo: Path, *, start_timeout: float = 120.0) -> None:
        if not JSIPFS.exists():
            raise RuntimeError(
                f"{JSIPFS} is missing: install the test IPFS daemon with `make ipfs` "
                "(make test does it)"
            )
        self.repo = repo
        self.start_timeout = start_timeout
        self.port = free_port()
        self.api = f"/ip4/127.0.0.1/tcp/{self.port}/http"
        self.log = repo.with_name(repo.name + ".log")
        self._env = {
            **os.environ,
            "IPFS_PATH": str(repo),
            # Node 20 lacks Promise.withResolvers, which js-ipfs 0.66 calls.
            "NODE_OPTIONS": f"--require {NODE_DIR / 'polyfill.cjs'}",
        }
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> IpfsDaemon:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        subprocess.run(
            [str(JSIPFS), "init", "--empty-repo"],
            env=self._env,
            check=True,
            capture_output=True,
            timeout=self.start_timeout,
        )
        self._isolate()
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                [str(JSIPFS), "daemon"], env=self._env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.start_timeout
        while READY not in self.log.read_text(errors="replace"):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the IPFS daemon did not start:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _isolate(self) -> None:
        path = self.repo / "config"
        config = json.loads(path.read_text())
        config["Addresses"].update(
            Swarm=["/ip4/127.0.0.1/tcp/0"],
            API=f"/ip4/127.0.0.1/tcp/{self.port}",
            Gateway="",
            RPC="",
            Delegates=[],
        )
        config["Discovery"] = {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}}
        config["Bootstrap"] = []
        config["Pubsub"]["Enabled"] = False
        config["Routing"] = {"Type": "none"}
        path.write_text(json.dumps(config, indent=2))
