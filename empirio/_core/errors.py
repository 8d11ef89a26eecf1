"""The error tree. Every failure the client raises is an :class:`EmpirioError`::

    EmpirioError
    ├── InvalidInputError (also ValueError)      bad input, found before anything is sent
    ├── ConfigurationError (also ValueError)     bad settings, found at construction
    ├── UnsupportedFeatureError                  e.g. the endpoint returns no sparse vectors
    ├── CacheError                               the embedding cache cannot be used
    ├── BudgetError                              the shared rate-limit budget cannot be reached
    ├── APIError                                 something went wrong talking to the service
    │   ├── APIConnectionError                   no response: refused, reset, dropped
    │   │   └── APITimeoutError                  no response in time
    │   ├── APIResponseValidationError           a 2xx whose body breaks the contract
    │   └── APIStatusError                       a non-2xx answer
    │       ├── BadRequestError                  400
    │       ├── AuthenticationError              401
    │       ├── InsufficientCreditsError         402
    │       ├── PermissionDeniedError            403
    │       ├── NotFoundError                    404
    │       ├── RequestTooLargeError             413
    │       ├── RateLimitError                   429
    │       └── InternalServerError              5xx

Messages never contain the API key or the texts. Errors raised while a call is under way carry
``inputs``: the positions, in the caller's list, of the texts in the request that failed; and,
when some requests of the call had finished, ``partial`` (an :class:`EmbeddingResult` of the
finished texts, in input order) and ``partial_indices`` (their positions in the input): nothing
paid for is lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from .result import EmbeddingResult

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BudgetError",
    "CacheError",
    "CacheWarning",
    "ConfigurationError",
    "EmpirioError",
    "InsufficientCreditsError",
    "InternalServerError",
    "InvalidInputError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "TruncationWarning",
    "UnsupportedFeatureError",
    "agree",
    "plural",
    "status_error",
    "truncation_message",
]


class EmpirioError(Exception):
    """Base of every error this library raises. Every one pickles and unpickles with its type,
    message and attributes (status, code, request id, inputs, partial results), so that it
    crosses process pools (multiprocessing, LlamaIndex ``num_workers``, Ray, Spark) intact. And
    every one rebuilds from its ``args`` alone, ``type(e)(*e.args)``, with its class and status
    (what job systems such as Celery do with their JSON result serializer), its ``args`` being
    plain JSON values."""

    def __reduce__(self) -> tuple[object, ...]:
        # Exception's own pickling calls cls(*args): subclasses with keyword-only arguments
        # (APIStatusError's status_code) could not be rebuilt, and a pool waiting for the
        # result hung or broke. Rebuilt here without __init__, from args and attributes.
        return _rebuild, (type(self), self.args, dict(self.__dict__))

    #: Positions in the caller's input of the texts whose request failed (empty if unknown).
    inputs: tuple[int, ...] = ()
    #: The texts of the call that were embedded before it failed, in input order (or ``None``).
    partial: EmbeddingResult | None = None
    #: Positions in the caller's input of the rows of :attr:`partial`.
    partial_indices: tuple[int, ...] = ()


class InvalidInputError(EmpirioError, ValueError):
    """Input the service would reject; raised before any request is sent.

    Attributes:
        indices: positions of the offending texts in the caller's list.
    """

    def __init__(self, message: str, indices: Sequence[int] = ()) -> None:
        super().__init__(message, list(indices))
        self.indices = tuple(indices)
        self.inputs = self.indices

    def __str__(self) -> str:
        return str(self.args[0])


class ConfigurationError(EmpirioError, ValueError):
    """Settings that cannot work, found when the client is built."""


class UnsupportedFeatureError(EmpirioError):
    """The endpoint does not offer what was asked for (for example sparse output)."""


class CacheError(EmpirioError):
    """The embedding cache cannot be used: corrupt, read-only, locked, or not a cache."""


class BudgetError(EmpirioError):
    """The shared rate-limit budget (``share_budget="redis://..."``) cannot be reached when a
    call starts: pacing without it could overrun the account that every host shares."""


class APIError(EmpirioError):
    """Talking to the service failed."""

    def __init__(self, message: str, *, inputs: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.inputs = inputs


class APIConnectionError(APIError):
    """No response arrived: the connection was refused, reset or closed early.

    Attributes:
        retryable: whether retrying may help (``False`` for a host that does not resolve
            before anything ever reached it: a wrong address or no network).
    """

    retryable: bool = True


class APITimeoutError(APIConnectionError):
    """No response arrived within the timeout."""


class APIResponseValidationError(APIError):
    """A successful response whose body breaks the contract (count, index, length, base64)."""


class APIStatusError(APIError):
    """The service answered with a non-2xx status.

    ``status_code`` may be omitted for the subclasses of one status (``RateLimitError("...")``
    is a 429); ``args`` are ``(message, status_code)``, so that ``type(e)(*e.args)`` keeps both.

    Attributes:
        status_code: the HTTP status.
        code: the error envelope's ``code`` (e.g. ``rate_limit_exceeded``), if any.
        request_id: the service's request id, for support tickets.
        retry_after: seconds the service asked us to wait, if it said.
    """

    #: The status a bare instance stands for (``None``: it must be given).
    default_status: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        *,
        code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        inputs: tuple[int, ...] = (),
    ) -> None:
        super().__init__(message, inputs=inputs)
        status = self.default_status if status_code is None else status_code
        if status is None:
            raise TypeError(f"{type(self).__name__} needs a status_code")
        self.args = (message, status)
        self.status_code = status
        self.code = code
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [f"HTTP {self.status_code}"]
        if self.code:
            parts.append(f"code={self.code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        if self.inputs:
            shown = ", ".join(map(str, self.inputs[:10]))
            more = ", ..." if len(self.inputs) > 10 else ""
            parts.append(f"inputs=[{shown}{more}]")
        return f"{self.message} ({'; '.join(parts)})"


class BadRequestError(APIStatusError):
    """400: the service rejected the request's content."""

    default_status = 400


class AuthenticationError(APIStatusError):
    """401: the key is missing or wrong."""

    default_status = 401


class InsufficientCreditsError(APIStatusError):
    """402: the account has no credits left."""

    default_status = 402


class PermissionDeniedError(APIStatusError):
    """403: the key may not use this model or endpoint."""

    default_status = 403


class NotFoundError(APIStatusError):
    """404: unknown model or path."""

    default_status = 404


class RequestTooLargeError(APIStatusError):
    """413: the request body is too large."""

    default_status = 413


class RateLimitError(APIStatusError):
    """429: the account's request or token rate was exceeded (retried automatically)."""

    default_status = 429


class InternalServerError(APIStatusError):
    """5xx: trouble on the service's side (retried automatically)."""

    default_status = 500


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    429: RateLimitError,
}


def status_error(
    status_code: int,
    message: str,
    *,
    code: str | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
    inputs: tuple[int, ...] = (),
) -> APIStatusError:
    """The :class:`APIStatusError` subclass for ``status_code``."""
    cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    return cls(
        message,
        status_code=status_code,
        code=code,
        request_id=request_id,
        retry_after=retry_after,
        inputs=inputs,
    )


def _rebuild(
    cls: type[EmpirioError], args: tuple[object, ...], state: dict[str, object]
) -> EmpirioError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


def agree(n: int, one: str, many: str | None = None) -> str:
    """The form of a word that agrees with a count of ``n``: ``one``, else ``many`` (default
    ``one + "s"``). ``agree(2, "position")``, ``agree(1, "is", "are")``."""
    return one if n == 1 else (many or one + "s")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 text"``, ``"2 texts"``: a count with its noun (see :func:`agree`)."""
    return f"{n:,} {agree(n, word, many)}"


def truncation_message(
    truncated: Sequence[tuple[int, int]], noun: str, option: str, shown: int = 5
) -> str:
    """What a :class:`TruncationWarning` says.

    Args:
        truncated: ``(where, tokens)`` of each text cut.
        noun: what ``where`` counts (``"position"``, ``"line"``).
        option: how to set the overflow in the reader's terms, with ``{}`` for the value
            (``"overflow='{}'"``, ``"--overflow {}"``).
    """
    n = len(truncated)
    where = ", ".join(f"{at} ({tokens:,} tokens)" for at, tokens in truncated[:shown])
    more = f" and {n - shown} more" if n > shown else ""
    them = agree(n, "it", "them")
    return (
        f"{plural(n, 'text')} exceeded the model's input limit and "
        f"{agree(n, 'was', 'were')} truncated to 8,191 tokens: "
        f"{agree(n, noun)} {where}{more}. Pass {option.format('chunk')} to embed "
        f"{them} whole, or {option.format('error')} to refuse {them}."
    )


class TruncationWarning(UserWarning):
    """Texts longer than the model's input limit were cut (``overflow="truncate"``).

    Attributes:
        truncated: ``(position in the caller's list, tokens before the cut)`` of each text cut,
            so that a tool can name them its own way (the CLI says line numbers).
    """

    def __init__(self, message: str, truncated: tuple[tuple[int, int], ...] = ()) -> None:
        super().__init__(message)
        self.truncated = truncated


class CacheWarning(UserWarning):
    """Vectors could not be written to the embedding cache (the call itself went on)."""
