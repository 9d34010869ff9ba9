"""`python -m flows.cli`: what torchrun and accelerate launch run."""

import sys

from flows.cli import main

sys.exit(main())
