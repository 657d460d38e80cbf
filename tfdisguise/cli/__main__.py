"""`python -m tfdisguise.cli`: the `tfdisguise` command."""

import sys

from tfdisguise.cli import main

sys.exit(main())
