"""``python -m examples.iot <command>`` (examples/iot/cli.py lists the commands)."""

from examples.iot.cli import main

main()
