"""``python -m ipguard.cli``: the same as the ``ipguard`` command."""

from ipguard.cli import main

main()
