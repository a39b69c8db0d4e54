"""The path users' scripts import (``from agent.hf_callback import GantryCallback``): the
rank room's callback itself (``agent.rank.hf_callback``), the same module object."""

import sys

from agent.rank import hf_callback as _hf_callback

sys.modules[__name__] = _hf_callback
