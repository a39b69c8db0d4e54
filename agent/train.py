"""``python -m agent.train``, the command in users' job specs: Gantry's trainer
(``agent.rank.train``)."""

import sys

from agent.rank.train import main

if __name__ == "__main__":
    sys.exit(main())
