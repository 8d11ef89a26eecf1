"""The playground: text-embedding-v4 in the browser with every parameter the API has.

    empirio playground              # the command: a local web app, opened in your browser

    from empirio.playground import show
    show()                          # in a notebook: the same page in an IFrame

With ``EMPIRIOLABS_API_KEY`` set it calls the real service from this process (the key never
reaches the page); without, it runs on the local emulator and says so.
"""

from ._app import Backend, create_app, open_in_browser, playground, show
from ._run import RunSettings, run, snippets

__all__ = [
    "Backend",
    "RunSettings",
    "create_app",
    "open_in_browser",
    "playground",
    "run",
    "show",
    "snippets",
]
