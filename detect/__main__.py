"""``python -m detect COMMAND ...``: the same as the ``detect`` command."""
import sys

from detect.cli import main

sys.exit(main())
