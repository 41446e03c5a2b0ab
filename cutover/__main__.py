"""``python -m cutover`` is the ``cutover`` command."""

from cutover.cli.main import main

main()
