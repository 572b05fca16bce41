"""``python -m retex_hf.cli``: what ``accelerate launch -m retex_hf.cli build ...`` runs."""

import sys

from . import main

sys.exit(main())
