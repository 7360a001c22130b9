"""``python -m broker``: the same as the ``distributary`` command."""

from broker.cli import main

main()
