"""``python -m weakclip <subcommand> ...`` = ``weakclip <subcommand> ...``."""

import sys

from weakclip.cli import main

if __name__ == "__main__":
    sys.exit(main())
