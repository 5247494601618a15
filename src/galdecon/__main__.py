import sys

from galdecon.cli import main

sys.exit(main())
