"""Worker processes for the demo, the benches and the integration tests.

    with WorkerProcess(["streams", "--bootstrap", addr], log_path=...) as worker: ...

Each is `python -m vip5.cli <args>` in its own session, stopped with SIGTERM (clean shutdown:
finish the batch, commit, close) and SIGKILL only if it does not stop in time; `kill()` is the
crash a fault test wants.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class WorkerProcess:
    def __init__(self, args: list[str], *, log_path: str | Path, env: dict[str, str] | None = None,
                 stop_timeout_s: float = 30.0):
        self.args, self.log_path = list(args), Path(log_path)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.stop_timeout_s = stop_timeout_s
        self.process: subprocess.Popen | None = None
        self._log_start = 0  # where this run's output begins in an appended log

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "vip5.cli", *self.args], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                            start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_log(self, text: str, timeout_s: float) -> bool:
        """True once `text` appears in what this run wrote to the log (e.g. a readiness line)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log_path.exists():
                with open(self.log_path, "rb") as log:
                    log.seek(self._log_start)
                    if text in log.read().decode(errors="replace"):
                        return True
            if not self.alive():
                return False
            time.sleep(0.2)
        return False

    def stop(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def kill(self) -> None:
        """SIGKILL: an abrupt crash, no cleanup."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
