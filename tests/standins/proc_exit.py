"""Stand-in: exits at once with the code given as its first argument."""

import sys

raise SystemExit(int(sys.argv[1]))
