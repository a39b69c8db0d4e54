"""The job spec's `parallelism: {tensor: T, expert: E}` key: sizes of at least 1 (1 for one
left out); data parallelism follows from the world size. Whether they fit the world (and the
model's experts) is the contract's check, `gantry.v1.parallelism.layout_problem`, run by
`validate_job_spec`, whose message names the numbers."""

from __future__ import annotations

from gantry.v1 import job_pb2
from gantry.v1.rules import MAX_WORLD_SIZE

from console.model.job_spec_yaml import FieldPath, SpecReader

PARALLELISM_KEYS = ("tensor", "expert")


class ParallelFields(SpecReader):
    """The check of the `parallelism` key."""

    def parallelism(self, value: object) -> job_pb2.Parallelism:
        path: FieldPath = ("parallelism",)
        doc = self.mapping(value, path, PARALLELISM_KEYS, "tensor and expert parallel sizes")
        out = job_pb2.Parallelism(tensor=1, expert=1)
        for key in PARALLELISM_KEYS:
            if doc.get(key) is None:
                continue
            size = self.whole(doc[key], (*path, key), MAX_WORLD_SIZE)
            if size < 1:
                self.fail((*path, key), f"{size} must be at least 1 (1: no {key} parallelism)")
            setattr(out, key, size)
        return out


def parallelism_yaml(spec: job_pb2.JobSpec) -> dict[str, int] | None:
    """The `parallelism` mapping `job_spec_to_yaml` writes; None when the spec has none."""
    if not spec.HasField("parallelism"):
        return None
    p = spec.parallelism
    return {"tensor": p.tensor or 1, "expert": p.expert or 1}
