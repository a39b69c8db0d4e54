"""The path users' scripts import (``from agent.report import report``): the rank room's
reporter itself (``agent.rank.report``), the same module object, so its one process-wide
reporter stays one."""

import sys

from agent.rank import report as _report

sys.modules[__name__] = _report
