"""``python -m empirio``: the same as the ``empirio`` command."""

from .cli import main

raise SystemExit(main())
