"""A handshake between a test and a child process: the child says when it has reached a point.

The child (a ``python -c`` script) pastes :data:`CHILD` and calls ``hold_here()`` at the point
the test needs (a cell written, a checkpoint saved): it writes ``ready`` to a pipe, then waits
for the test's signal (SIGKILL, SIGINT). The test starts it with :meth:`Handshake.popen` and
blocks in :meth:`Handshake.wait` until the pipe says ``ready``: nothing depends on timing, so a
slow or loaded machine only takes longer.
"""

from __future__ import annotations

import os
import select
import subprocess

ENV = "SSLTK_TEST_READY_FD"

CHILD = f"""
import os as _os, signal as _signal
def hold_here():
    _os.write(int(_os.environ[{ENV!r}]), b"ready")
    _signal.alarm(600)  # SIGALRM ends a child whose test died before signalling it
    while True:
        _signal.pause()  # until the test's SIGKILL, or SIGINT (raises KeyboardInterrupt)
"""


class Handshake:
    """A pipe from one child process to the test."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()

    def popen(self, args: list[str], env: dict | None = None, **kw) -> subprocess.Popen:
        env = (os.environ if env is None else env) | {ENV: str(self._write)}
        try:
            return subprocess.Popen(args, pass_fds=(self._write,), env=env, **kw)
        finally:
            os.close(self._write)  # the child holds the only write end: EOF when it exits

    def wait(self, proc: subprocess.Popen, timeout: float = 600) -> None:
        """Block until the child is at its hold point (fails if it exits first)."""
        ready, _, _ = select.select([self._read], [], [], timeout)
        data = os.read(self._read, 5) if ready else b""
        os.close(self._read)
        assert data == b"ready", (f"the child never reached its hold point (exit code "
                                  f"{proc.poll()})")
