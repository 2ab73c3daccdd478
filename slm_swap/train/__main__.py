"""`python -m slm_swap.train` (what `accelerate launch` and `torchrun` run): see `slm_swap.train.entry`."""

import sys

from slm_swap.train.entry import main

sys.exit(main())
