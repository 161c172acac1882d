import sys

from blocks.cli import main

sys.exit(main())
