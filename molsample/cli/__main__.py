"""`python -m molsample.cli`: the command line (as `molsample` and `python -m molsample`)."""
import sys

from . import main

sys.exit(main())
