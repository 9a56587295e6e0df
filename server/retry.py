"""Retry delays of the retry policy strategies."""

from __future__ import annotations

import random

from .models import RetryPolicySpec

__all__ = ["MAX_RETRY_DELAY_MS", "retry_delay_ms"]

# No retry waits longer than this, whatever the policy computes.
MAX_RETRY_DELAY_MS = 30 * 24 * 3600 * 1000


def retry_delay_ms(policy: RetryPolicySpec, retry: int, rng: random.Random | None = None) -> int:
    """Delay before retry number ``retry`` (1 for the first retry).

    Exponential ``factor * exponent**(retry - 1)``, linear ``factor * retry``, fixed ``factor``; full jitter draws
    uniformly from [0, d], equal jitter from [d/2, d]; ``max_delay_ms`` caps the result.
    """
    draw = rng.uniform if rng is not None else random.uniform
    factor = float(policy.backoff_factor_ms)
    base, _, jitter = policy.strategy.partition("_")
    if base == "EXPONENTIAL":
        delay = factor * policy.exponent ** (retry - 1)
    elif base == "LINEAR":
        delay = factor * retry
    else:
        delay = factor
    if jitter == "FULL_JITTER":
        delay = draw(0, delay)
    elif jitter == "EQUAL_JITTER":
        delay = delay / 2 + draw(0, delay / 2)
    if policy.max_delay_ms is not None:
        delay = min(delay, float(policy.max_delay_ms))
    if not delay < MAX_RETRY_DELAY_MS:  # also catches inf and nan from extreme exponents
        delay = MAX_RETRY_DELAY_MS
    return max(0, int(delay))
