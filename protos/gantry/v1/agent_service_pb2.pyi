from gantry.v1 import job_pb2 as _job_pb2
from gantry.v1 import task_pb2 as _task_pb2
from gantry.v1 import telemetry_pb2 as _telemetry_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodeInfoResponse(_message.Message):
    __slots__ = ("info", "latest", "xid_events")
    INFO_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    XID_EVENTS_FIELD_NUMBER: _ClassVar[int]
    info: _telemetry_pb2.NodeInfo
    latest: _telemetry_pb2.NodeSample
    xid_events: _containers.RepeatedCompositeFieldContainer[_telemetry_pb2.XidEvent]
    def __init__(self, info: _Optional[_Union[_telemetry_pb2.NodeInfo, _Mapping]] = ..., latest: _Optional[_Union[_telemetry_pb2.NodeSample, _Mapping]] = ..., xid_events: _Optional[_Iterable[_Union[_telemetry_pb2.XidEvent, _Mapping]]] = ...) -> None: ...

class WatchNodeRequest(_message.Message):
    __slots__ = ("replay_history", "history_s")
    REPLAY_HISTORY_FIELD_NUMBER: _ClassVar[int]
    HISTORY_S_FIELD_NUMBER: _ClassVar[int]
    replay_history: bool
    history_s: float
    def __init__(self, replay_history: _Optional[bool] = ..., history_s: _Optional[float] = ...) -> None: ...

class WatchNodeResponse(_message.Message):
    __slots__ = ("sample", "replayed")
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    sample: _telemetry_pb2.NodeSample
    replayed: bool
    def __init__(self, sample: _Optional[_Union[_telemetry_pb2.NodeSample, _Mapping]] = ..., replayed: _Optional[bool] = ...) -> None: ...

class PeerAgent(_message.Message):
    __slots__ = ("name", "address", "token", "ssh", "token_file")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SSH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FILE_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    token: str
    ssh: str
    token_file: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., token: _Optional[str] = ..., ssh: _Optional[str] = ..., token_file: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "peers")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    spec: _job_pb2.JobSpec
    peers: _containers.RepeatedCompositeFieldContainer[PeerAgent]
    def __init__(self, spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., peers: _Optional[_Iterable[_Union[PeerAgent, _Mapping]]] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class StopJobRequest(_message.Message):
    __slots__ = ("name", "grace_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    grace_s: float
    def __init__(self, name: _Optional[str] = ..., grace_s: _Optional[float] = ...) -> None: ...

class StopJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class RestartJobRequest(_message.Message):
    __slots__ = ("name", "node", "exclude_nodes", "from_checkpoint", "deepspeed_config_json", "spec", "include_nodes", "replace_nodes")
    class ReplaceNodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_NODES_FIELD_NUMBER: _ClassVar[int]
    FROM_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DEEPSPEED_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_NODES_FIELD_NUMBER: _ClassVar[int]
    REPLACE_NODES_FIELD_NUMBER: _ClassVar[int]
    name: str
    node: str
    exclude_nodes: _containers.RepeatedScalarFieldContainer[str]
    from_checkpoint: str
    deepspeed_config_json: str
    spec: _job_pb2.JobSpec
    include_nodes: _containers.RepeatedScalarFieldContainer[str]
    replace_nodes: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., node: _Optional[str] = ..., exclude_nodes: _Optional[_Iterable[str]] = ..., from_checkpoint: _Optional[str] = ..., deepspeed_config_json: _Optional[str] = ..., spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., include_nodes: _Optional[_Iterable[str]] = ..., replace_nodes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RestartJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ...) -> None: ...

class ForgetJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ForgetJobResponse(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_job_pb2.Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[_job_pb2.Job, _Mapping]]] = ...) -> None: ...

class DescribeJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeJobResponse(_message.Message):
    __slots__ = ("job", "checkpoints", "checkpoint_bytes")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_BYTES_FIELD_NUMBER: _ClassVar[int]
    job: _job_pb2.Job
    checkpoints: _containers.RepeatedCompositeFieldContainer[_job_pb2.Checkpoint]
    checkpoint_bytes: int
    def __init__(self, job: _Optional[_Union[_job_pb2.Job, _Mapping]] = ..., checkpoints: _Optional[_Iterable[_Union[_job_pb2.Checkpoint, _Mapping]]] = ..., checkpoint_bytes: _Optional[int] = ...) -> None: ...

class WatchJobEventsRequest(_message.Message):
    __slots__ = ("job_name", "after_seq", "follow", "metrics_tail", "batched")
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    METRICS_TAIL_FIELD_NUMBER: _ClassVar[int]
    BATCHED_FIELD_NUMBER: _ClassVar[int]
    job_name: str
    after_seq: int
    follow: bool
    metrics_tail: int
    batched: bool
    def __init__(self, job_name: _Optional[str] = ..., after_seq: _Optional[int] = ..., follow: _Optional[bool] = ..., metrics_tail: _Optional[int] = ..., batched: _Optional[bool] = ...) -> None: ...

class WatchJobEventsResponse(_message.Message):
    __slots__ = ("event", "events")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    event: _job_pb2.JobEvent
    events: _containers.RepeatedCompositeFieldContainer[_job_pb2.JobEvent]
    def __init__(self, event: _Optional[_Union[_job_pb2.JobEvent, _Mapping]] = ..., events: _Optional[_Iterable[_Union[_job_pb2.JobEvent, _Mapping]]] = ...) -> None: ...

class TailRankLogRequest(_message.Message):
    __slots__ = ("job_name", "attempt", "rank", "stream", "tail_lines", "follow", "from_offset")
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TAIL_LINES_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    FROM_OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_name: str
    attempt: int
    rank: int
    stream: str
    tail_lines: int
    follow: bool
    from_offset: int
    def __init__(self, job_name: _Optional[str] = ..., attempt: _Optional[int] = ..., rank: _Optional[int] = ..., stream: _Optional[str] = ..., tail_lines: _Optional[int] = ..., follow: _Optional[bool] = ..., from_offset: _Optional[int] = ...) -> None: ...

class TailRankLogResponse(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[_job_pb2.LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[_job_pb2.LogLine, _Mapping]]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job_name",)
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    job_name: str
    def __init__(self, job_name: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[_job_pb2.Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[_job_pb2.Checkpoint, _Mapping]]] = ...) -> None: ...

class StartRanksRequest(_message.Message):
    __slots__ = ("spec", "attempt", "master_addr", "master_port", "world_size", "ranks", "resume_from", "validate_only", "leader")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    spec: _job_pb2.JobSpec
    attempt: int
    master_addr: str
    master_port: int
    world_size: int
    ranks: _containers.RepeatedScalarFieldContainer[int]
    resume_from: str
    validate_only: bool
    leader: str
    def __init__(self, spec: _Optional[_Union[_job_pb2.JobSpec, _Mapping]] = ..., attempt: _Optional[int] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ..., world_size: _Optional[int] = ..., ranks: _Optional[_Iterable[int]] = ..., resume_from: _Optional[str] = ..., validate_only: _Optional[bool] = ..., leader: _Optional[str] = ...) -> None: ...

class StartRanksResponse(_message.Message):
    __slots__ = ("ranks",)
    RANKS_FIELD_NUMBER: _ClassVar[int]
    ranks: _containers.RepeatedCompositeFieldContainer[_job_pb2.Rank]
    def __init__(self, ranks: _Optional[_Iterable[_Union[_job_pb2.Rank, _Mapping]]] = ...) -> None: ...

class StopRanksRequest(_message.Message):
    __slots__ = ("job_name", "attempt", "grace_s")
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    job_name: str
    attempt: int
    grace_s: float
    def __init__(self, job_name: _Optional[str] = ..., attempt: _Optional[int] = ..., grace_s: _Optional[float] = ...) -> None: ...

class StopRanksResponse(_message.Message):
    __slots__ = ("ranks",)
    RANKS_FIELD_NUMBER: _ClassVar[int]
    ranks: _containers.RepeatedCompositeFieldContainer[_job_pb2.Rank]
    def __init__(self, ranks: _Optional[_Iterable[_Union[_job_pb2.Rank, _Mapping]]] = ...) -> None: ...

class RequestCheckpointRequest(_message.Message):
    __slots__ = ("job_name", "attempt", "request_id")
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_name: str
    attempt: int
    request_id: str
    def __init__(self, job_name: _Optional[str] = ..., attempt: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class RequestCheckpointResponse(_message.Message):
    __slots__ = ("asked",)
    ASKED_FIELD_NUMBER: _ClassVar[int]
    asked: int
    def __init__(self, asked: _Optional[int] = ...) -> None: ...

class StartTaskRequest(_message.Message):
    __slots__ = ("eval", "quantize", "serve", "loadtest")
    EVAL_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    SERVE_FIELD_NUMBER: _ClassVar[int]
    LOADTEST_FIELD_NUMBER: _ClassVar[int]
    eval: _task_pb2.EvalTaskSpec
    quantize: _task_pb2.QuantizeTaskSpec
    serve: _task_pb2.ServeTaskSpec
    loadtest: _task_pb2.LoadTestTaskSpec
    def __init__(self, eval: _Optional[_Union[_task_pb2.EvalTaskSpec, _Mapping]] = ..., quantize: _Optional[_Union[_task_pb2.QuantizeTaskSpec, _Mapping]] = ..., serve: _Optional[_Union[_task_pb2.ServeTaskSpec, _Mapping]] = ..., loadtest: _Optional[_Union[_task_pb2.LoadTestTaskSpec, _Mapping]] = ...) -> None: ...

class StartTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class StopTaskRequest(_message.Message):
    __slots__ = ("task_id", "grace_s")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    grace_s: float
    def __init__(self, task_id: _Optional[str] = ..., grace_s: _Optional[float] = ...) -> None: ...

class StopTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[_task_pb2.Task, _Mapping]]] = ...) -> None: ...

class WatchTaskRequest(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class WatchTaskResponse(_message.Message):
    __slots__ = ("progress", "task")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    progress: _task_pb2.TaskProgress
    task: _task_pb2.Task
    def __init__(self, progress: _Optional[_Union[_task_pb2.TaskProgress, _Mapping]] = ..., task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...
