"""python -m pppssh, and the pppssh command."""

import sys


def without_tls() -> None:
    """Keep the ssl module out of this process: nothing in pppssh speaks TLS (SSH has its
    own cryptography), and asyncio, which imports ssl when it can, works without it. libssl
    then is never loaded: a tenth of a second less to start on a slow gateway (the lab
    kernel), 1.1 MB less RSS after the imports on a Debian host. An ssl already imported
    stays."""
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]


def run() -> None:
    """The command line, without TLS."""
    without_tls()
    from .cli import entry

    entry()


if __name__ == "__main__":
    run()
