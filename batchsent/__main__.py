"""``python -m batchsent``: the same CLI as the ``batchsent`` command."""

from batchsent.cli import main

main()
