"""The command line (``run_recbole_histllm.py``, the ``recbole-histllm`` script): train and test a model
(:func:`recbole_histllm.quick_start.main`), or with ``--eval_only --run=DIR`` re-score a finished run
without training (:func:`recbole_histllm.run_io.eval_only_main`)."""

from __future__ import annotations

import sys

from recbole_histllm import quick_start, run_io
from recbole_histllm.quick_start import EVAL_ONLY_FLAGS


def main(argv: list[str] | None = None) -> int:
    """Dispatch to training or to ``--eval_only``; returns the exit code (2 on bad input)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in EVAL_ONLY_FLAGS for a in argv):
        return run_io.eval_only_main(argv)
    return quick_start.main(argv)


if __name__ == "__main__":
    sys.exit(main())
