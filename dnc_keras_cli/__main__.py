"""`python -m dnc_keras_cli ...`: the `dnc-keras` command without its console script (e.g. from
a checkout that is not installed)."""

import sys

from dnc_keras_cli import main

sys.exit(main())
