"""``python -m ddpm`` (and ``torchrun -m ddpm``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
