"""Errors through Celery, the job system most of our users put embedding jobs behind.

Celery's JSON result serializer keeps an exception as its class name, module and ``args``,
and the caller's side rebuilds it as ``cls(*args)``. Every error of ours must come back as
itself, with its status, or ``except empirio.AuthenticationError`` never matches there.
One test runs Celery's own encoding and decoding over every class; one runs a real worker
(a subprocess) on a real ``redis-server`` broker against the emulator, both on 127.0.0.1.
"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

celery = pytest.importorskip("celery", reason="needs celery (the dev extra installs it)")

from empirio import AuthenticationError, EmpirioError, InvalidInputError  # noqa: E402
from empirio._core import errors  # noqa: E402

from ..client.test_redis_budget import Redis  # noqa: E402

KEY = "the-right-key-0123456789abcdef"
WRONG = "wrong-key-0123456789"


def _every_error_class() -> list[type[EmpirioError]]:
    return [c for c in vars(errors).values() if inspect.isclass(c) and issubclass(c, EmpirioError)]


def _made(cls: type[EmpirioError]) -> EmpirioError:
    if cls is errors.APIStatusError:
        return cls("the message", 418)
    if cls is InvalidInputError:
        return cls("text 3 is empty", (3,))
    return cls("the message")


@pytest.mark.parametrize("cls", _every_error_class(), ids=lambda c: c.__name__)
def test_every_error_survives_celerys_own_json_round_trip(cls: type[EmpirioError]) -> None:
    from celery import Celery
    from kombu.serialization import dumps, loads

    app = Celery("roundtrip", set_as_current=False)
    app.conf.result_serializer = "json"
    backend = app.backend  # the default DisabledBackend still has Celery's exception codec
    made = _made(cls)
    _, _, wire = dumps(backend.prepare_exception(made), serializer="json")
    back = backend.exception_to_python(loads(wire, "application/json", "utf-8"))
    assert type(back) is cls
    assert str(back) == str(made)
    assert getattr(back, "status_code", None) == getattr(made, "status_code", None)
    assert getattr(back, "indices", None) == getattr(made, "indices", None)


TASKS = """
    from celery import Celery
    from empirio import EmbeddingClient

    app = Celery("empirio_tasks", broker={redis!r}, backend={redis!r})
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)

    @app.task
    def embed(base_url: str, key: str, texts: list[str]) -> list[list[float]]:
        client = EmbeddingClient(api_key=key, base_url=base_url, rpm=None, tpm=None,
                                 dimensions=64)
        return client.embed(texts).dense.tolist()
"""


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Any]:
    """A Celery worker in its own process, on a redis-server broker, and the tasks module."""
    server = Redis()
    server.start()
    (tmp_path / "empirio_tasks.py").write_text(textwrap.dedent(TASKS.format(redis=server.url)))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "empirio_tasks", "worker", "--pool=solo",
         "--without-heartbeat", "--without-mingle", "--without-gossip", "--loglevel=WARNING"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("empirio_tasks")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("empirio_tasks", None)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        server.stop()
        assert b"AuthenticationError" in err  # the worker logged the failure...
        assert KEY.encode() not in err  # ...and neither key
        assert WRONG.encode() not in err


def test_a_real_worker_hands_errors_back_as_themselves(worker: Any, make_emulator: Any) -> None:
    url = make_emulator(api_key=KEY)
    assert len(worker.embed.delay(url, KEY, ["hello"]).get(timeout=120)) == 1

    with pytest.raises(AuthenticationError) as refused:
        worker.embed.delay(url, WRONG, ["hello"]).get(timeout=120)
    assert refused.value.status_code == 401

    with pytest.raises(InvalidInputError) as bad:  # refused before any request was sent
        worker.embed.delay(url, KEY, ["fine", ""]).get(timeout=120)
    assert bad.value.indices == (1,)
