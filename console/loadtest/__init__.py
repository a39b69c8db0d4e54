"""Gantry's load tester: open and closed loop against a gRPC or OpenAI-compatible HTTP
endpoint, with HDR histograms merged exactly across worker processes.

Pure logic (schedule, plan, histogram, report, compare) is kept apart from I/O (targets,
resolve, engine, workers, runner) so that it is tested without servers.
"""
