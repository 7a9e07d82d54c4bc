"""`python -m dynlp ...`: the same as the `dynlp` command (see dynlp/cli.py)."""

from .cli import main

raise SystemExit(main())
