"""Child processes of the demo: start one with its output in a log file, stop it
with SIGTERM and a bounded wait (then SIGKILL), kill it, restart it.

Every child runs in its own session, so a Ctrl-C at the terminal reaches only
the demo, which then stops the children in pipeline order.  Stage children are
``python -m examples.iot <stage> ...`` run from the repository root.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

import trio

REPO_ROOT: Final = Path(__file__).resolve().parent.parent.parent
# How long a child gets to exit after SIGTERM before it is SIGKILLed.  Stages
# finish their batch and commit in well under this.
STOP_TIMEOUT_S_DEFAULT: Final = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (bind to 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def stage_argv(stage: str, *args: str) -> list[str]:
    """The command line of ``python -m examples.iot <stage> <args>``."""
    return [sys.executable, "-m", "examples.iot", stage, *args]


class ChildProcess:
    """One child process of the demo, its output appended to ``log_path``.

    ``start`` may be called again after the child exited (a restart); each
    start appends to the same log.  Not safe for concurrent use from several
    tasks at once except ``kill``/``signal``, which are atomic.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.starts = 0
        self._process: trio.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def start(self) -> None:
        """Start the child.  Raises OSError when it cannot be executed."""
        assert not self.running, f"{self.name} is already running"
        self._close_log()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._log.write(f"==== start {self.starts}: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])]
        )
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env or {})
        self._process = await trio.lowlevel.open_process(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(self.cwd),
            start_new_session=True,
        )
        self.starts += 1

    def signal(self, signum: int) -> None:
        """Send ``signum`` if the child is running."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signum)

    async def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for the child to exit (at most ``timeout_s``); its exit status, or
        None when it is still running."""
        if self._process is None:
            return None
        with trio.move_on_after(float("inf") if timeout_s is None else timeout_s):
            await self._process.wait()
        return self._process.returncode

    async def kill(self) -> int | None:
        """SIGKILL the child and reap it; its exit status (None if never started)."""
        self.signal(signal.SIGKILL)
        status = await self.wait(STOP_TIMEOUT_S_DEFAULT)
        self._close_log()
        return status

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S_DEFAULT) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL.  The exit status
        (0 is a clean stop; -9 means it had to be killed)."""
        if self._process is None:
            return None
        if self._process.returncode is None:
            self.signal(signal.SIGTERM)
            if await self.wait(timeout_s) is None:
                return await self.kill()
        self._close_log()
        return self._process.returncode

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
