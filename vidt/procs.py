"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import signal
import sys


def die_with_parent(sig: int = signal.SIGTERM):
    """A `preexec_fn` for subprocess.Popen: on Linux the child gets `sig` when its parent
    dies (however it dies), so a killed launcher leaves no server, proxy or trainer running
    on its own; and the child handles `sig` as by default even if the parent ignores or
    blocks it."""

    def preexec() -> None:
        # A parent that ignores or blocks the signal (Ray's workers do, for SIGINT) passes
        # that on to its children: a child Python would never see it. Undo both.
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        if sys.platform.startswith("linux"):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))

    return preexec
