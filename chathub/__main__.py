import sys

from chathub.cli import main

sys.exit(main())
