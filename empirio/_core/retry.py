"""Retry policy, pure: which failures to retry (statuses, transport failures, broken bodies:
:func:`is_retryable`, :func:`transport_error`) and how long to wait before the next attempt.

Backoff is ``min(0.5 * 2**n, 8) * U(0.75, 1)`` seconds for retry ``n`` (0-based): full jitter
spreads clients apart, and the 0.75 floor keeps the wait from collapsing to nothing. A server
that says how long to wait (``retry-after-ms`` or ``Retry-After``, up to 120 s) is obeyed instead,
but never below half the backoff, at most :data:`MAX_FLOOR_S` (a ``Retry-After: 0`` must not
turn retries into a request loop: 33,242 requests in 75 s for one text, before this floor).
A server that asks for more than :data:`MAX_RETRY_AFTER` is not waited for at all: the call
fails at once (:func:`waits_too_long`) with the server's value in the error, instead of
holding the caller for hours in capped retries.

Retries are bounded by count and, for 429s, by time as well: the service counts its limits over
a 60 s window, so a request refused for rate keeps being retried for at least
:data:`THROTTLE_WINDOW_S` after its first attempt, however many retries that takes.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .config import host_port, is_loopback_url
from .errors import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    EmpirioError,
)

__all__ = [
    "MAX_FLOOR_S",
    "MAX_RETRY_AFTER",
    "THROTTLE_WINDOW_S",
    "RetryPolicy",
    "TransportFailure",
    "is_retryable",
    "is_retryable_status",
    "parse_retry_after",
    "transport_error",
    "waits_too_long",
]

#: The longest server-requested wait we honour, in seconds; a longer one fails the call at once.
MAX_RETRY_AFTER = 60.0
#: How long a request refused with 429 is retried at least, in seconds from its first attempt:
#: the service's 60 s window, one second of slack, and one backoff step at the cap.
THROTTLE_WINDOW_S = 75.0
#: The largest floor under a server-requested wait, in seconds (see the module docstring).
MAX_FLOOR_S = 1.0


def is_retryable_status(status: int) -> bool:
    """408 (timeout), 409 (conflict), 429 (rate limit) and every 5xx are worth another try."""
    return status in (408, 409, 429) or status >= 500


def parse_retry_after(headers: Mapping[str, str], now_epoch: float) -> float | None:
    """Seconds the server asks us to wait, from ``retry-after-ms`` or ``Retry-After``.

    Args:
        headers: response headers, keys lower-case.
        now_epoch: the current Unix time in seconds, for HTTP-date values.

    Returns:
        The wait in seconds (at least 0, as the server said it: see :func:`waits_too_long`),
        or ``None`` when absent or unreadable.
    """
    value: float | None = None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = None
    raw = headers.get("retry-after")
    if value is None and raw is not None:
        try:
            value = float(raw)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                return None
            value = when.timestamp() - now_epoch
    if value is None or value != value:  # NaN
        return None
    return max(value, 0.0)


def waits_too_long(retry_after: float | None) -> bool:
    """Whether a server asks for a longer wait than we give a retry (:data:`MAX_RETRY_AFTER`):
    such a call fails at once, carrying the server's value."""
    return retry_after is not None and retry_after > MAX_RETRY_AFTER


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times to retry, and how long to wait between attempts.

    Attributes:
        max_retries: retries after the first attempt (0 = never retry).
        base: wait before the first retry, in seconds, before jitter.
        cap: the longest computed wait, in seconds, before jitter.
    """

    max_retries: int = 10
    base: float = 0.5
    cap: float = 8.0

    def backoff(self, retry: int, u: float) -> float:
        """Computed wait before retry number ``retry`` (0-based); ``u`` is uniform in [0, 1)."""
        return min(self.base * 2.0**retry, self.cap) * (0.75 + 0.25 * u)

    def delay(self, retry: int, retry_after: float | None, u: float) -> float:
        """The wait before retry ``retry``, in seconds: the server's word if it gave one (but no
        less than ``min(backoff / 2, MAX_FLOOR_S)``), else the backoff."""
        backoff = self.backoff(retry, u)
        if retry_after is not None:
            return max(retry_after, min(backoff / 2, MAX_FLOOR_S))
        return backoff

    def gives_up(self, retries_done: int, *, throttled: bool = False, elapsed: float = 0.0) -> bool:
        """True when ``retries_done`` retries have used the allowance.

        Args:
            retries_done: retries already made of this request.
            throttled: the last answer was a 429.
            elapsed: seconds since the request's first attempt.
        """
        if retries_done < self.max_retries:
            return False
        return not (throttled and self.max_retries > 0 and elapsed < THROTTLE_WINDOW_S)


#: How a request failed before any HTTP answer, as the I/O layer classifies it.
TransportFailure = Literal["unresolved", "refused", "timeout", "other"]


def transport_error(
    failure: TransportFailure,
    *,
    base_url: str,
    timeout: float,
    exc_name: str = "",
    reason: str = "",
    reached_before: bool,
) -> EmpirioError:
    """The error for a request that got no HTTP answer, and whether it is worth retrying.

    A host that does not resolve, or a port where nothing listens, is an answer rather than a
    blip while nothing has succeeded yet (``reached_before``): it fails at once with the likely
    fix, instead of a minute of silent retries. Afterwards, as every other failure (a timeout,
    a reset), it is retried.
    """
    if failure == "timeout":
        return APITimeoutError(f"no response from {base_url} within {timeout} s")
    if failure == "unresolved" and not reached_before:
        err = APIConnectionError(
            f"cannot resolve the host of {base_url}: check the address and the "
            "network (no request has reached it)"
        )
        err.retryable = False
        return err
    if failure == "refused" and not reached_before:
        hint = (
            "is the emulator running? `empirio serve`, or start_if_no_key() in Python"
            if is_loopback_url(base_url)
            else "check the address and port"
        )
        err = APIConnectionError(
            f"nothing is listening on {host_port(base_url)} (connection refused); {hint}"
        )
        err.retryable = False
        return err
    return APIConnectionError(
        f"connection to {base_url} failed: {exc_name}" + (f" ({reason})" if reason else "")
    )


def is_retryable(outcome: EmpirioError, retries_done: int) -> bool:
    """Whether a failed attempt is worth another: a retryable status (see
    :func:`is_retryable_status`), a transport failure not judged final by
    :func:`transport_error`, or a body that breaks the contract (a vector that is not one),
    which may be a glitch on the way: tried once more, never more (a server that always lies is
    not a blip)."""
    return (
        (isinstance(outcome, APIConnectionError) and outcome.retryable)
        or (isinstance(outcome, APIStatusError) and is_retryable_status(outcome.status_code))
        or (isinstance(outcome, APIResponseValidationError) and retries_done == 0)
    )
