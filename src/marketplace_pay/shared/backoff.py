"""Exponential back-off with equal jitter, for every call to another system that is retried."""

from __future__ import annotations

import random


def equal_jitter_backoff_ms(attempt: int, *, base_ms: int, cap_ms: int, rng: random.Random | None = None) -> int:
    """capped = min(base·2^(attempt-1), cap); the delay is drawn from [capped/2, capped]."""
    exp: int = base_ms * (1 << max(min(attempt, 40) - 1, 0))
    capped = min(exp, cap_ms)
    half = capped // 2
    return half + (rng.randint(0, half) if rng is not None else random.randint(0, half))
