"""`python -m trainer.evaluate` (installed: `colorizer-evaluate`): scores an export on held-out photos.

The command lives in trainer/serve/evaluate.py; this module keeps the name users type.
"""

from trainer.serve.evaluate import run

if __name__ == "__main__":
    run()
