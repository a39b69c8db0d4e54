"""``python -m agent.serve``: the inference server (``agent.serve.main``)."""

from agent.serve.main import main

main()
