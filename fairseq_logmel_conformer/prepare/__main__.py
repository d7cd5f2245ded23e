"""``python -m fairseq_logmel_conformer.prepare``: same as the ``logmel-prepare`` console script."""
import sys

from .cli import main

sys.exit(main())
