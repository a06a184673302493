"""`python -m molsample` (and `torchrun ... -m molsample`): the command line."""
import sys

from .cli import main

sys.exit(main())
