import sys

from galdecon.cli.app import main

sys.exit(main())
