import sys

from pylcogt.cli import main

sys.exit(main())
