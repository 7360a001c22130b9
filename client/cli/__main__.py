"""``python -m client.cli``: the client commands without the broker package.

Errors print as one line (``distributary: error: ...``) like the real
``distributary`` group does; usage errors exit 2, operating errors 1.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from client.cli import register


class _OneLineErrors(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            result = super().main(*args, **kwargs)
        except click.exceptions.Abort:
            sys.exit(130)
        except click.ClickException as error:
            click.echo(f"distributary: error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_OneLineErrors)
def main() -> None:
    """Distributary client commands."""


register(main)

if __name__ == "__main__":
    main(prog_name="distributary")
