import sys

from harness.running.cli import main

sys.exit(main())
