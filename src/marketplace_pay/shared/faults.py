"""Named crash points for the fault tests (`MP_FAULTS`). A no-op unless configured.

    MP_FAULTS="relay.after_read=kill@2,capture.after_psp=kill"

kills this process (SIGKILL, no cleanup) the 2nd time the relay has read rows, or the
first time a capture got its PSP answer. `raise` instead of `kill` raises InjectedFault.
"""

from __future__ import annotations

import os
import signal
import sys


class InjectedFault(RuntimeError):
    pass


class _Faults:
    def __init__(self) -> None:
        self._rules: dict[str, tuple[str, int]] = {}
        self._hits: dict[str, int] = {}

    def configure(self, spec: str | None) -> None:
        self._rules.clear()
        self._hits.clear()
        for item in (spec or "").split(","):
            item = item.strip()
            if not item:
                continue
            point, _, rest = item.partition("=")
            action, _, nth = (rest or "kill").partition("@")
            if action not in ("kill", "raise"):
                raise ValueError(f"MP_FAULTS: unknown action {action!r} for {point!r}")
            self._rules[point.strip()] = (action, int(nth or 1))

    def hit(self, point: str) -> None:
        if not self._rules:
            return
        rule = self._rules.get(point)
        if rule is None:
            return
        count = self._hits.get(point, 0) + 1
        self._hits[point] = count
        action, nth = rule
        if count != nth:
            return
        if action == "kill":
            sys.stderr.write(f"MP_FAULTS: killing process at {point} (hit {count})\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        raise InjectedFault(point)


faults = _Faults()
