"""`python -m trainer.launch` (installed: `colorizer-launch`): submits, watches and promotes cluster runs.

The command lives in trainer/cluster/launch.py; this module keeps the name users type.
"""

from trainer.cluster.launch import run

if __name__ == "__main__":
    run()
