"""`python -m mindpet_lite ...`: the `mindpet-lite` command line."""
import sys

from mindpet_lite.cli import main

sys.exit(main())
