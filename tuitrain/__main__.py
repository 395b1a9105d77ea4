"""`python -m tuitrain ...`, and so `torchrun --nproc-per-node N -m tuitrain --preset NAME --headless`."""

import sys

from tuitrain.tui.cli import main

sys.exit(main())
