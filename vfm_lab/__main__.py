import sys

from vfm_lab.cli import main

sys.exit(main())
