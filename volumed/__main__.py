import sys

from volumed.cli import main

sys.exit(main())
