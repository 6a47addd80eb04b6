"""`python -m tailored_hf ...` is the `tailored-hf` command."""

import sys

from .cli import main

sys.exit(main())
