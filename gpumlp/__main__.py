"""``python -m gpumlp``: the same as the ``gpumlp`` command."""
import sys

from .cli import main

sys.exit(main())
