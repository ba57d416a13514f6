"""``python -m ddpm.metrics.classifier train|report``: runs :func:`ddpm.metrics.classifier.cli.main`."""

import sys

from .cli import main

sys.exit(main())
