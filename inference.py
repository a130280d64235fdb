"""Entry point reserved by the project layout; it is built in issue #7.

Until then it refuses to run (exit status 1) instead of pretending to work.
"""

import sys

if __name__ == "__main__":
    sys.exit("inference.py is not available yet: it is being built in issue #7.")
