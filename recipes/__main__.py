"""``python -m recipes``: see :mod:`recipes.cli`."""
import sys

from recipes.cli import main

sys.exit(main())
