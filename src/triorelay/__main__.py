"""``python -m triorelay``: the same as the ``triorelay`` command."""

from triorelay.cli import main

raise SystemExit(main())
