import sys

from unet_fast.cli import main

sys.exit(main())
