"""``python -m agent.train``, the command in users' job specs: Gantry's trainer
(``agent.rank.train``)."""

from agent.rank.quick_exit import exit_after
from agent.rank.train import main

if __name__ == "__main__":
    exit_after(main)
