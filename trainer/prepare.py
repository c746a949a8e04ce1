"""`python -m trainer.prepare` (installed: `colorizer-prepare`): photos -> TFRecord shards of pairs.

The command lives in trainer/data/prepare.py; this module keeps the name users type.
"""

from trainer.data.prepare import run

if __name__ == "__main__":
    run()
