"""`python -m trainer.client` (installed: `colorizer-client`): photos -> colorized PNGs via TF Serving.

The command lives in trainer/serve/client.py; this module keeps the name users type.
"""

from trainer.serve.client import run

if __name__ == "__main__":
    run()
