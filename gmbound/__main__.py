"""``python -m gmbound ...`` runs the ``gmbound`` command."""
import sys

from .cli import main

sys.exit(main())
