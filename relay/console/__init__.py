"""The console: a web page for whoever runs relay (`/console`, on with RELAY_ADMIN_TOKEN).

    routes.py    Starlette routes: sign-in, the pages, the POSTs (retry, replay, sign-out)
    auth.py      the token once, then a signed session cookie; CSRF tokens; notes
    summary.py   the overview's figures (stats, per-hour tallies, last errors)
    outgoing.py  the request a destination is sent, rebuilt, secrets masked
    filters.py   times, ages and money as the pages write them
    templates/   Jinja2, autoescaped (no value is rendered with |safe)
    static/      console.css, served by relay itself (no asset from any other host)

Like the CLI, the console reads and writes only through the Store interface.
"""

from relay.console.routes import Console, build

__all__ = ["Console", "build"]
