"""The apps over the client that are not tools of their own package: the demo (``empirio demo``,
``./dev demo``). They may import the framework adapters; the core (``empirio._core``,
``empirio._io``, ``empirio.client``) never does (``tests/core/test_layers.py`` checks it)."""
