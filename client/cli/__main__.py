"""``python -m client.cli``: the client commands without the broker package.

Errors print as one line (``distributary: error: ...``) like the real
``distributary`` group does; usage errors exit 2, operating errors 1.
"""

from __future__ import annotations

import click

from client.cli import register
from client.cli.common import OneLineErrors


@click.group(cls=OneLineErrors)
def main() -> None:
    """Distributary client commands."""


register(main)

if __name__ == "__main__":
    main(prog_name="distributary")
