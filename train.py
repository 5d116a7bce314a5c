"""`python train.py ARGS` is `maskednas run ARGS`: the same arguments, stages and messages.

    python train.py                                   # digits, every stage
    python train.py --config cifar10_subset search.epochs=20
    python train.py --resume runs/<name>              # continue an interrupted run
    torchrun --nproc_per_node=2 train.py ...          # the same run over 2 processes (or GPUs)

`maskednas run --help` lists the options; `maskednas --help` the other commands.
"""
import sys

from maskednas.cli import execute, run_command

if __name__ == "__main__":
    execute(run_command, sys.argv[1:], "train.py")
