"""Train and evaluate any model of recbole_histllm or RecBole on a dataset.

    python run_recbole_histllm.py --model=HistLLM --dataset=ml-100k [--config_files="a.yaml b.yaml"]
        [--output_dir=DIR] [--debug] [--any_recbole_key=value ...]
    python run_recbole_histllm.py --eval_only --run=DIR [--test_rows=N] [--output_dir=NEW_DIR]   # no training
"""

import sys

from recbole_histllm.cli import main

if __name__ == "__main__":
    sys.exit(main())
