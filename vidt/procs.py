"""Child processes that never outlive the process that started them.

    subprocess.Popen(with_parent([...]))       # the child gets SIGTERM when this process dies

Linux only (prctl PR_SET_PDEATHSIG); elsewhere the command runs as it is. Done by a small
`python -m vidt.procs` step that sets it up in the child and then execs the command, rather
than with Popen's `preexec_fn`, which is not safe in a process with threads (the tests', and
Ray's workers): the fork child may deadlock or crash in Python code run before the exec.
"""

from __future__ import annotations

import os
import signal
import sys


def with_parent(cmd: list[str], sig: int = signal.SIGTERM) -> list[str]:
    """`cmd` prefixed so that it gets `sig` when the calling process dies (however it dies),
    and handles `sig` as by default even if this process ignores or blocks it (Ray's
    workers block SIGINT, which their children would otherwise inherit)."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-m", "vidt.procs", str(int(sig)), *cmd]


def _exec(sig: int, cmd: list[str]) -> None:
    import ctypes

    signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() == 1:  # the parent died before prctl: do not start at all
        sys.exit(1)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    _exec(int(sys.argv[1]), sys.argv[2:])
