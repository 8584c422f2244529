import sys

from ipm._entry import main

sys.exit(main())
