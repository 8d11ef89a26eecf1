"""``empirio check``: what an endpoint really supports, found with a handful of tiny requests.

The vendors' documents disagree (Alibaba documents its OpenAI-compatible mode as float-only and
dense-only; the reseller documents base64), nobody states whether a smaller dimension is the
prefix of the 2,048-d vector, and the limits are each account's own. Each probe is one small
request of one to ten two-word texts (a few hundred tokens in all, well under a cent), sent
one at a time and spaced to the account's per-second rule, and read raw: status, headers, body.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from ._core.config import PRICE_PER_MILLION_TOKENS_USD, is_loopback_url
from ._core.decode import LIMIT_HEADERS, advertised_limits, batch_limit_from, decode_error
from ._core.errors import (
    APIStatusError,
    AuthenticationError,
    EmpirioError,
    InsufficientCreditsError,
)
from ._core.retry import parse_retry_after
from ._core.secret import redact
from ._core.wire import decode_base64

__all__ = ["Report", "check_endpoint"]

#: The text every probe embeds (a batch probe sends numbered copies).
_TEXT = "empirio check"
#: The most inputs per request probed (the contract's 10).
_MAX_BATCH = 10
#: Cosine above which a smaller dimension counts as the renormalised prefix of 2,048.
_PREFIX_COSINE = 0.999
#: Seconds between probes when the endpoint advertises no limits (the per-second rule of a
#: 50 RPM account allows one request a second).
_SPACING_S = 1.1
#: The longest a probe waits out a 429 (then it reports what the endpoint said).
_MAX_429_WAIT_S = 60.0


@dataclass
class Report:
    """What the endpoint supports (``--json`` prints it as one object).

    Attributes:
        base_url: the endpoint checked.
        model: the model asked for.
        max_batch: the most inputs one request was accepted with (probed up to 10).
        base64: ``encoding_format="base64"`` answered with the right vectors.
        sparse: ``output_type="sparse"`` answered with sparse vectors.
        instructions: ``text_type``/``instruct`` changed a query's vector (honoured, not ignored).
        matryoshka_prefix: a 256-d vector equals the renormalised prefix of the 2,048-d one.
        limits: ``{"rpm": ..., "tpm": ...}`` the endpoint advertises in its headers (``None``
            for each it does not).
        latency_ms: the median time of a one-text request, in milliseconds.
        requests: requests sent; tokens: tokens billed; cost_usd: their estimated cost.
        notes: what a probe saw when a feature was not there.
    """

    base_url: str
    model: str
    max_batch: int = 0
    base64: bool = False
    sparse: bool = False
    instructions: bool = False
    matryoshka_prefix: bool = False
    limits: dict[str, float | None] = field(default_factory=dict)
    latency_ms: float = 0.0
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> str:
        """One JSON object."""
        return json.dumps(asdict(self), ensure_ascii=False)

    def lines(self) -> list[str]:
        """The report for a terminal."""
        yes = {True: "yes", False: "no"}
        limits = ", ".join(f"{k}={v:g}" for k, v in self.limits.items() if v is not None)
        out = [
            f"endpoint            {self.base_url} ({self.model})",
            f"inputs per request  {self.max_batch}",
            f"base64 output       {yes[self.base64]}",
            f"sparse output       {yes[self.sparse]}",
            f"instructions (API)  {yes[self.instructions]}",
            f"matryoshka prefix   {yes[self.matryoshka_prefix]} (256-d vs the 2,048-d prefix)",
            f"advertised limits   {limits or 'none'}",
            f"latency             {self.latency_ms:.0f} ms (one text)",
            f"spent               {self.requests} requests, {self.tokens:,} tokens, "
            f"${self.cost_usd:.6f}",
        ]
        return out + [f"note: {n}" for n in self.notes]


class _Prober:
    def __init__(self, http: httpx.Client, base_url: str, key: str, model: str) -> None:
        self.http, self.url, self.key, self.model = http, f"{base_url}/embeddings", key, model
        # Spaced from the first request, on this machine too: a local emulator may enforce
        # the account's per-second rule as the service does (``empirio serve --rpm 50``).
        self.spacing = _SPACING_S
        self.last = -float("inf")
        self.requests = 0
        self.tokens = 0
        self.headers: httpx.Headers | None = None

    def send(self, texts: list[str], **fields: Any) -> tuple[httpx.Response, float]:
        """One probe, spaced after the last; a 429 is waited out once (its Retry-After, at most
        :data:`_MAX_429_WAIT_S`) and the probe sent again."""
        r, ms = self._send_once(texts, fields)
        if r.status_code == 429:
            asked = parse_retry_after(r.headers, time.time())
            time.sleep(min(_MAX_429_WAIT_S, asked if asked is not None else 2 * self.spacing))
            self.spacing *= 2  # the endpoint is stricter than it said: slower from now on
            r, ms = self._send_once(texts, fields)
        return r, ms

    def _send_once(self, texts: list[str], fields: dict[str, Any]) -> tuple[httpx.Response, float]:
        wait = self.last + self.spacing - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        body = {"model": self.model, "input": texts, "encoding_format": "float", **fields}
        start = time.monotonic()
        r = self.http.post(self.url, json=body, headers={"Authorization": f"Bearer {self.key}"})
        self.last = time.monotonic()
        self.requests += 1
        if self.headers is None:
            self.headers = r.headers
            self._pace(r.headers)
        if r.status_code == 200:
            usage = r.json().get("usage") or {}
            self.tokens += int(usage.get("total_tokens") or usage.get("prompt_tokens") or 0)
        elif r.status_code in (401, 402, 403, 404):
            raise decode_error(r.status_code, r.content, r.headers, time.time(), (self.key,))
        return r, (self.last - start) * 1000

    def _pace(self, headers: httpx.Headers) -> None:
        """The spacing the first answer's advertised limits call for."""
        rpm = advertised_limits(headers).get("rpm")
        if rpm:  # the per-second rule: rpm/60 a second, at least 1
            self.spacing = max(60.0 / rpm, 1.0 / max(1, int(rpm // 60))) * 1.1
        elif is_loopback_url(self.url):
            self.spacing = 0.0  # a local server that advertises no limits has none to keep

    def reason(self, r: httpx.Response) -> str:
        return redact(r.text[:200].strip(), self.key)


def _dense(r: httpx.Response) -> npt.NDArray[np.float32] | None:
    """The first item's dense vector (float list or base64), or ``None``."""
    try:
        item = r.json()["data"][0]
        raw = item["embedding"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if isinstance(raw, str):
        return decode_base64(raw)
    return np.asarray(raw, dtype=np.float32) if isinstance(raw, list) and raw else None


def check_endpoint(
    *, api_key: str, base_url: str, model: str = "text-embedding-v4", timeout: float = 60.0
) -> Report:
    """Probe ``base_url`` and report what it supports (see :class:`Report`).

    Raises:
        EmpirioError: the endpoint cannot be reached, or refuses the key or the model (a
            401, 402, 403 or 404 ends the check at once: nothing else can be learned).
    """
    report = Report(base_url=base_url, model=model)
    with httpx.Client(timeout=timeout, trust_env=False) as http:
        p = _Prober(http, base_url, api_key, model)
        try:
            _probe(p, report)
        except httpx.HTTPError as exc:
            raise EmpirioError(
                f"cannot reach {base_url}: {type(exc).__name__}: {redact(str(exc), api_key)}"
            ) from None
    report.requests, report.tokens = p.requests, p.tokens
    report.cost_usd = p.tokens * PRICE_PER_MILLION_TOKENS_USD / 1_000_000
    return report


def _probe(p: _Prober, report: Report) -> None:
    # Latency and the full vector: three one-text requests, the median kept.
    latencies, full = [], None
    for _ in range(3):
        r, ms = p.send([_TEXT], dimensions=2048)
        if r.status_code != 200:
            raise _refused(r, p)
        latencies.append(ms)
        full = _dense(r)
    report.latency_ms = round(float(np.median(latencies)), 1)
    advertised = advertised_limits(p.headers or httpx.Headers())
    report.limits = {name: advertised.get(name) for name, _ in LIMIT_HEADERS}

    # Matryoshka: is the 256-d vector the renormalised prefix of the 2,048-d one?
    r, _ = p.send([_TEXT], dimensions=256)
    small = _dense(r) if r.status_code == 200 else None
    if full is not None and small is not None and len(full) == 2048 and len(small) == 256:
        prefix = full[:256] / np.linalg.norm(full[:256])
        cosine = float(prefix @ (small / np.linalg.norm(small)))
        report.matryoshka_prefix = cosine > _PREFIX_COSINE
        if not report.matryoshka_prefix:
            report.notes.append(f"256-d vs the 2,048-d prefix: cosine {cosine:.4f}")
    else:
        report.notes.append(f"dimensions=256: HTTP {r.status_code} {p.reason(r)}")

    # base64: the same vector, packed.
    r, _ = p.send([_TEXT], dimensions=256, encoding_format="base64")
    packed = _dense(r) if r.status_code == 200 else None
    report.base64 = (
        packed is not None and small is not None and bool(np.allclose(packed, small, atol=1e-5))
    )
    if not report.base64:
        report.notes.append(f"base64: HTTP {r.status_code} {p.reason(r)[:120]}")

    # Sparse output.
    r, _ = p.send([_TEXT], dimensions=64, output_type="sparse")
    try:
        item = r.json()["data"][0] if r.status_code == 200 else {}
    except (ValueError, KeyError, IndexError):
        item = {}
    report.sparse = bool(item.get("sparse_embedding"))
    if not report.sparse:
        report.notes.append(
            f"output_type=sparse: HTTP {r.status_code}, "
            + ("no sparse_embedding in the answer" if r.status_code == 200 else p.reason(r))
        )

    # Instructions through the API: does text_type/instruct change a query's vector?
    r, _ = p.send(
        [_TEXT],
        dimensions=256,
        text_type="query",
        instruct="Given a web search query, retrieve relevant passages that answer the query",
    )
    query = _dense(r) if r.status_code == 200 else None
    if query is not None and small is not None:
        report.instructions = not bool(np.allclose(query, small, atol=1e-5))
        if not report.instructions:
            report.notes.append("text_type/instruct accepted but ignored (the same vector)")
    else:
        report.notes.append(f"text_type/instruct: HTTP {r.status_code} {p.reason(r)[:120]}")

    # Inputs per request: ten, else the limit the refusal names, else halving down.
    n = _MAX_BATCH
    while n >= 1:
        r, _ = p.send([f"{_TEXT} {i}" for i in range(n)], dimensions=64)
        if r.status_code == 200:
            report.max_batch = n
            break
        error = decode_error(r.status_code, r.content, r.headers, time.time(), (p.key,))
        named = batch_limit_from(error)
        n = named if named is not None and named < n else n // 2


def _refused(r: httpx.Response, p: _Prober) -> EmpirioError:
    error = decode_error(r.status_code, r.content, r.headers, time.time(), (p.key,))
    if isinstance(error, AuthenticationError | InsufficientCreditsError):
        return error
    return APIStatusError(
        f"the endpoint refused a one-text request: HTTP {r.status_code} {error.message}",
        status_code=r.status_code,
    )
