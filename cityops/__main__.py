"""``python -m cityops``: the same as the ``cityops`` command."""

from cityops.cli import main

main()
