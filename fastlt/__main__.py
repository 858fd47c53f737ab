import sys

from fastlt.cli import main

sys.exit(main())
