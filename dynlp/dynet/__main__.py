"""`python -m dynlp.dynet SCRIPT [ARGS]`: run a DyNet program on dynlp, unmodified."""

import sys

from .runner import main

sys.exit(main())
