"""``python -m saliencekit`` runs the command line tool."""

import sys

from saliencekit.cli import main

sys.exit(main())
