import sys

from pymosix.cli.main import main

sys.exit(main())
