import sys

from qemu_lite.cli import main

sys.exit(main())
