import sys

from ipm.cli import main

sys.exit(main())
