"""Drop-in behaviour of both adapters inside the machinery users put them in: settings changed
after construction, copies, pickles, LangChain serialisation, LlamaIndex progress and ingestion
identity, and a sparse sibling on an endpoint without sparse output."""

from __future__ import annotations

import copy
import logging
import pickle
import pickletools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from empirio import UnsupportedFeatureError
from langchain_empirio import EmpirioEmbeddings
from llamaindex_empirio import EmpirioEmbedding

from ..conftest import stats

KEY = "sk-dropin-secret-key-0123456789"
TEXTS = [f"drop-in text {i}" for i in range(30)]

Make = Callable[..., Any]


def lc(url: str, **kw: Any) -> EmpirioEmbeddings:
    return EmpirioEmbeddings(**{"api_key": KEY, "base_url": url, "rpm": None, "tpm": None, **kw})


def li(url: str, **kw: Any) -> EmpirioEmbedding:
    return EmpirioEmbedding(**{"api_key": KEY, "base_url": url, "rpm": None, "tpm": None, **kw})


def docs(e: Any, texts: list[str] = TEXTS) -> list[list[float]]:
    if isinstance(e, EmpirioEmbeddings):
        return e.embed_documents(texts)
    return list(e.get_text_embedding_batch(texts))


def query(e: Any, text: str) -> list[float]:
    if isinstance(e, EmpirioEmbeddings):
        return e.embed_query(text)
    return list(e.get_query_embedding(text))


BOTH = pytest.mark.parametrize("make", [lc, li], ids=["langchain", "llamaindex"])


@BOTH
def test_dimensions_changed_by_copy_or_assignment_are_honoured(url: str, make: Make) -> None:
    e = make(url, dimensions=256)
    assert len(docs(e)[0]) == 256
    bigger = e.model_copy(update={"dimensions": 512})
    assert len(docs(bigger)[0]) == 512
    assert len(docs(e)[0]) == 256  # the original is untouched
    e.dimensions = 1024
    assert len(query(e, "q")) == 1024


@BOTH
def test_a_bad_assignment_fails_at_once(url: str, make: Make) -> None:
    e = make(url)
    with pytest.raises(ValueError, match="choose one of"):
        e.dimensions = 100
    assert KEY not in repr(e)


@BOTH
def test_base_url_batch_size_and_instruction_changes_are_honoured(
    make_emulator: Make, make: Make
) -> None:
    first, second = make_emulator(), make_emulator()
    e = make(first)
    docs(e)
    e.base_url = second
    docs(e)
    assert stats(second)["requests"] == 3
    e.batch_size = 4
    docs(e, [f"other {i}" for i in range(8)])
    assert stats(second)["max_inputs_per_request"] == 10  # earlier requests
    assert stats(second)["requests"] == 3 + 2
    before = query(e, "where is the cat?")
    e.query_instruction = "Find the sentence that mentions an animal"
    assert query(e, "where is the cat?") != before


@BOTH
def test_deepcopy_and_pickle_are_silent_and_keep_the_key_secret(
    url: str, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    e = make(url, dimensions=512)
    expected = docs(e)
    with caplog.at_level(logging.DEBUG):
        deep = copy.deepcopy(e)
        blob = pickle.dumps(e)
        restored = pickle.loads(blob)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert KEY.encode() not in blob
    text: list[str] = []
    pickletools.dis(blob, out=_Sink(text))
    assert KEY not in "".join(text)
    for other in (deep, restored):
        assert other.empirio_client is not e.empirio_client
        assert docs(other) == expected
        assert other.api_key.get_secret_value() == KEY


@BOTH
def test_siblings_share_a_client_and_survive_copies(url: str, make: Make) -> None:
    e = make(url)
    s = e.sparse()
    assert s.empirio_client is e.empirio_client
    copy.deepcopy(s)
    pickle.loads(pickle.dumps(s))
    e.dimensions = 512  # the dense object follows its fields; its sibling keeps its own
    assert len(docs(e)[0]) == 512
    assert s.dimensions == 1024


def test_langchain_dumps_and_loads_round_trip_without_the_key(url: str) -> None:
    import warnings

    from langchain_core.load import dumpd, dumps, loads

    e = lc(url, dimensions=512, query_instruction="Find code")
    text = dumps(e)
    assert KEY not in text
    assert dumpd(e)["type"] == "constructor"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loads() is marked beta
        back = loads(
            text,
            secrets_map={"EMPIRIOLABS_API_KEY": KEY},
            valid_namespaces=["langchain_empirio"],
            allowed_objects=[EmpirioEmbeddings],
        )
    assert isinstance(back, EmpirioEmbeddings)
    assert (back.dimensions, back.rpm, back.query_instruction) == (512, None, "Find code")
    assert back.embed_query("x") == e.embed_query("x")


def test_llamaindex_shows_one_bar_for_a_whole_job(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    e = li(url, embed_batch_size=100, show_progress=True)
    texts = [f"job text {i}" for i in range(1000)]
    got = e.get_text_embedding_batch(texts, show_progress=True)
    assert len(got) == 1000
    err = capsys.readouterr().err
    assert err.count("1000/1000") == 1
    assert err.count("\n") <= 2  # one bar, not one per 100-text batch


async def test_llamaindex_async_jobs_show_one_bar(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    e = li(url, embed_batch_size=100)
    got = await e.aget_text_embedding_batch([f"a {i}" for i in range(500)], show_progress=True)
    await e.empirio_client.aclose()
    assert len(got) == 500
    err = capsys.readouterr().err
    assert err.count("500/500") == 1
    assert err.count("\n") <= 2


def test_llamaindex_ingestion_identity_is_only_what_changes_vectors(url: str) -> None:
    from llama_index.core.ingestion.pipeline import get_transformation_hash
    from llama_index.core.schema import TextNode

    nodes = [TextNode(text=t) for t in TEXTS]
    base = get_transformation_hash(nodes, li(url))
    for same in (
        {"rpm": 300},
        {"timeout": 5.0},
        {"max_concurrency": 2},
        {"max_retries": 1},
        {"batch_size": 5},
        {"embed_batch_size": 10},
        {"share_budget": "client"},
    ):
        assert get_transformation_hash(nodes, li(url, **same)) == base, same
    for other in ({"dimensions": 512}, {"model_name": "text-embedding-v3"}, {"overflow": "chunk"}):
        assert get_transformation_hash(nodes, li(url, **other)) != base, other
    assert KEY not in str(li(url).to_dict())


@BOTH
def test_a_sparse_sibling_on_an_endpoint_without_sparse_output(
    make_emulator: Make, make: Make
) -> None:
    url = make_emulator(sparse_output=False)
    dense = make(url)
    sparse = dense.sparse()
    with pytest.raises(UnsupportedFeatureError):
        sparse_docs(sparse)
    first = stats(url)["requests"]
    got = docs(dense)  # dense keeps working ...
    assert len(got) == 30
    assert stats(url)["requests"] == first + 3  # ... asking for the dense view alone
    with pytest.raises(UnsupportedFeatureError, match="does not return sparse"):
        sparse_docs(sparse)
    assert stats(url)["requests"] == first + 3  # refused before sending
    np.testing.assert_array_equal(np.array(docs(dense)), np.array(got))


def sparse_docs(sparse: Any) -> object:
    if hasattr(sparse, "embed_documents"):
        return sparse.embed_documents(TEXTS)
    return sparse.get_text_embedding_batch(TEXTS)


class _Sink:
    def __init__(self, parts: list[str]) -> None:
        self.parts = parts

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)


@pytest.fixture
def url(make_emulator: Make) -> str:
    return str(make_emulator())
