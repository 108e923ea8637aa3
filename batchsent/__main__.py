"""``python -m batchsent``: the same CLI as the ``batchsent`` command."""

from .cli import main

main()
