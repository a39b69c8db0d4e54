"""``python -m agent.demo_data``, the README's command: the demo conversations
(``agent.rank.demo_data``)."""

import sys

from agent.rank.demo_data import main

if __name__ == "__main__":
    sys.exit(main())
