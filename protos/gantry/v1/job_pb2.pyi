import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_STARTING: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_RESTARTING: _ClassVar[JobState]
    JOB_STATE_STOPPING: _ClassVar[JobState]
    JOB_STATE_STOPPED: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_PREEMPTED: _ClassVar[JobState]

class RankState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANK_STATE_UNSPECIFIED: _ClassVar[RankState]
    RANK_STATE_PENDING: _ClassVar[RankState]
    RANK_STATE_STARTING: _ClassVar[RankState]
    RANK_STATE_RUNNING: _ClassVar[RankState]
    RANK_STATE_HUNG: _ClassVar[RankState]
    RANK_STATE_STOPPING: _ClassVar[RankState]
    RANK_STATE_EXITED: _ClassVar[RankState]
    RANK_STATE_FAILED: _ClassVar[RankState]
    RANK_STATE_KILLED: _ClassVar[RankState]

class RankPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RANK_PHASE_UNSPECIFIED: _ClassVar[RankPhase]
    RANK_PHASE_STARTED: _ClassVar[RankPhase]
    RANK_PHASE_IMPORTING: _ClassVar[RankPhase]
    RANK_PHASE_BUILDING_OPS: _ClassVar[RankPhase]
    RANK_PHASE_JOINING: _ClassVar[RankPhase]
    RANK_PHASE_LOADING_CHECKPOINT: _ClassVar[RankPhase]
    RANK_PHASE_FIRST_STEP: _ClassVar[RankPhase]
    RANK_PHASE_TRAINING: _ClassVar[RankPhase]

class JobEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_EVENT_KIND_UNSPECIFIED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_SUBMITTED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_ATTEMPT_STARTED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_RANK_STARTED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_RANK_EXITED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_RANK_FAILED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_RANK_HUNG: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_ATTEMPT_FAILED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_RESTARTING: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_STOPPED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_SUCCEEDED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_FAILED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_CHECKPOINT_SAVED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_ALERT: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_OPERATOR_ACTION: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_NCCL: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_METRICS: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_RANK_PHASE: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_RANK_KILLED: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_PREEMPTION_NOTICE: _ClassVar[JobEventKind]
    JOB_EVENT_KIND_NODE_REPLACED: _ClassVar[JobEventKind]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_STARTING: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_RESTARTING: JobState
JOB_STATE_STOPPING: JobState
JOB_STATE_STOPPED: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_PREEMPTED: JobState
RANK_STATE_UNSPECIFIED: RankState
RANK_STATE_PENDING: RankState
RANK_STATE_STARTING: RankState
RANK_STATE_RUNNING: RankState
RANK_STATE_HUNG: RankState
RANK_STATE_STOPPING: RankState
RANK_STATE_EXITED: RankState
RANK_STATE_FAILED: RankState
RANK_STATE_KILLED: RankState
RANK_PHASE_UNSPECIFIED: RankPhase
RANK_PHASE_STARTED: RankPhase
RANK_PHASE_IMPORTING: RankPhase
RANK_PHASE_BUILDING_OPS: RankPhase
RANK_PHASE_JOINING: RankPhase
RANK_PHASE_LOADING_CHECKPOINT: RankPhase
RANK_PHASE_FIRST_STEP: RankPhase
RANK_PHASE_TRAINING: RankPhase
JOB_EVENT_KIND_UNSPECIFIED: JobEventKind
JOB_EVENT_KIND_SUBMITTED: JobEventKind
JOB_EVENT_KIND_ATTEMPT_STARTED: JobEventKind
JOB_EVENT_KIND_RANK_STARTED: JobEventKind
JOB_EVENT_KIND_RANK_EXITED: JobEventKind
JOB_EVENT_KIND_RANK_FAILED: JobEventKind
JOB_EVENT_KIND_RANK_HUNG: JobEventKind
JOB_EVENT_KIND_ATTEMPT_FAILED: JobEventKind
JOB_EVENT_KIND_RESTARTING: JobEventKind
JOB_EVENT_KIND_STOPPED: JobEventKind
JOB_EVENT_KIND_SUCCEEDED: JobEventKind
JOB_EVENT_KIND_FAILED: JobEventKind
JOB_EVENT_KIND_CHECKPOINT_SAVED: JobEventKind
JOB_EVENT_KIND_ALERT: JobEventKind
JOB_EVENT_KIND_OPERATOR_ACTION: JobEventKind
JOB_EVENT_KIND_NCCL: JobEventKind
JOB_EVENT_KIND_METRICS: JobEventKind
JOB_EVENT_KIND_RANK_PHASE: JobEventKind
JOB_EVENT_KIND_RANK_KILLED: JobEventKind
JOB_EVENT_KIND_PREEMPTION_NOTICE: JobEventKind
JOB_EVENT_KIND_NODE_REPLACED: JobEventKind

class NodeSlots(_message.Message):
    __slots__ = ("node", "slots")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    node: str
    slots: int
    def __init__(self, node: _Optional[str] = ..., slots: _Optional[int] = ...) -> None: ...

class RestartPolicy(_message.Message):
    __slots__ = ("max_restarts", "backoff_s", "resume", "resume_flag")
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    BACKOFF_S_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    RESUME_FLAG_FIELD_NUMBER: _ClassVar[int]
    max_restarts: int
    backoff_s: float
    resume: str
    resume_flag: str
    def __init__(self, max_restarts: _Optional[int] = ..., backoff_s: _Optional[float] = ..., resume: _Optional[str] = ..., resume_flag: _Optional[str] = ...) -> None: ...

class CostPolicy(_message.Message):
    __slots__ = ("price_per_gpu_hour", "instance_type", "pricing")
    PRICE_PER_GPU_HOUR_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRICING_FIELD_NUMBER: _ClassVar[int]
    price_per_gpu_hour: float
    instance_type: str
    pricing: str
    def __init__(self, price_per_gpu_hour: _Optional[float] = ..., instance_type: _Optional[str] = ..., pricing: _Optional[str] = ...) -> None: ...

class EvalTargets(_message.Message):
    __slots__ = ("bleu4_min", "rouge_l_min", "ttft_ms_max", "tokens_per_s_min")
    BLEU4_MIN_FIELD_NUMBER: _ClassVar[int]
    ROUGE_L_MIN_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_MAX_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_MIN_FIELD_NUMBER: _ClassVar[int]
    bleu4_min: float
    rouge_l_min: float
    ttft_ms_max: float
    tokens_per_s_min: float
    def __init__(self, bleu4_min: _Optional[float] = ..., rouge_l_min: _Optional[float] = ..., ttft_ms_max: _Optional[float] = ..., tokens_per_s_min: _Optional[float] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "nodes", "command", "args", "env", "restart", "hang_timeout_s", "collective_timeout_s", "checkpoint_dir", "deepspeed_config_json", "working_dir", "cost", "eval_targets", "keep_checkpoints", "parallelism", "spares", "preemption")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    HANG_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_DIR_FIELD_NUMBER: _ClassVar[int]
    DEEPSPEED_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    EVAL_TARGETS_FIELD_NUMBER: _ClassVar[int]
    KEEP_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    PARALLELISM_FIELD_NUMBER: _ClassVar[int]
    SPARES_FIELD_NUMBER: _ClassVar[int]
    PREEMPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    nodes: _containers.RepeatedCompositeFieldContainer[NodeSlots]
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    restart: RestartPolicy
    hang_timeout_s: float
    collective_timeout_s: float
    checkpoint_dir: str
    deepspeed_config_json: str
    working_dir: str
    cost: CostPolicy
    eval_targets: EvalTargets
    keep_checkpoints: int
    parallelism: Parallelism
    spares: _containers.RepeatedScalarFieldContainer[str]
    preemption: PreemptionPolicy
    def __init__(self, name: _Optional[str] = ..., nodes: _Optional[_Iterable[_Union[NodeSlots, _Mapping]]] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., restart: _Optional[_Union[RestartPolicy, _Mapping]] = ..., hang_timeout_s: _Optional[float] = ..., collective_timeout_s: _Optional[float] = ..., checkpoint_dir: _Optional[str] = ..., deepspeed_config_json: _Optional[str] = ..., working_dir: _Optional[str] = ..., cost: _Optional[_Union[CostPolicy, _Mapping]] = ..., eval_targets: _Optional[_Union[EvalTargets, _Mapping]] = ..., keep_checkpoints: _Optional[int] = ..., parallelism: _Optional[_Union[Parallelism, _Mapping]] = ..., spares: _Optional[_Iterable[str]] = ..., preemption: _Optional[_Union[PreemptionPolicy, _Mapping]] = ...) -> None: ...

class Parallelism(_message.Message):
    __slots__ = ("tensor", "expert")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    tensor: int
    expert: int
    def __init__(self, tensor: _Optional[int] = ..., expert: _Optional[int] = ...) -> None: ...

class PreemptionPolicy(_message.Message):
    __slots__ = ("grace_s",)
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    grace_s: float
    def __init__(self, grace_s: _Optional[float] = ...) -> None: ...

class RankCoordinates(_message.Message):
    __slots__ = ("data", "tensor", "expert")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    data: int
    tensor: int
    expert: int
    def __init__(self, data: _Optional[int] = ..., tensor: _Optional[int] = ..., expert: _Optional[int] = ...) -> None: ...

class RankMetrics(_message.Message):
    __slots__ = ("step", "epoch", "loss", "grad_norm", "learning_rate", "loss_scale", "step_time_s", "samples_per_s", "tokens_per_s", "collective_time_s", "collective_time_by_op_s", "forward_s", "backward_s", "allreduce_s", "optimizer_step_s", "memory_bytes", "time", "total_steps", "tflops", "peak_memory_bytes", "collective_time_by_group_s", "eval_loss", "eval_step")
    class CollectiveTimeByOpSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class CollectiveTimeByGroupSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LOSS_SCALE_FIELD_NUMBER: _ClassVar[int]
    STEP_TIME_S_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_TIME_BY_OP_S_FIELD_NUMBER: _ClassVar[int]
    FORWARD_S_FIELD_NUMBER: _ClassVar[int]
    BACKWARD_S_FIELD_NUMBER: _ClassVar[int]
    ALLREDUCE_S_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_STEP_S_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    TFLOPS_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    COLLECTIVE_TIME_BY_GROUP_S_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    EVAL_STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    epoch: float
    loss: float
    grad_norm: float
    learning_rate: float
    loss_scale: float
    step_time_s: float
    samples_per_s: float
    tokens_per_s: float
    collective_time_s: float
    collective_time_by_op_s: _containers.ScalarMap[str, float]
    forward_s: float
    backward_s: float
    allreduce_s: float
    optimizer_step_s: float
    memory_bytes: int
    time: _timestamp_pb2.Timestamp
    total_steps: int
    tflops: float
    peak_memory_bytes: int
    collective_time_by_group_s: _containers.ScalarMap[str, float]
    eval_loss: float
    eval_step: int
    def __init__(self, step: _Optional[int] = ..., epoch: _Optional[float] = ..., loss: _Optional[float] = ..., grad_norm: _Optional[float] = ..., learning_rate: _Optional[float] = ..., loss_scale: _Optional[float] = ..., step_time_s: _Optional[float] = ..., samples_per_s: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., collective_time_s: _Optional[float] = ..., collective_time_by_op_s: _Optional[_Mapping[str, float]] = ..., forward_s: _Optional[float] = ..., backward_s: _Optional[float] = ..., allreduce_s: _Optional[float] = ..., optimizer_step_s: _Optional[float] = ..., memory_bytes: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., total_steps: _Optional[int] = ..., tflops: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., collective_time_by_group_s: _Optional[_Mapping[str, float]] = ..., eval_loss: _Optional[float] = ..., eval_step: _Optional[int] = ...) -> None: ...

class Rank(_message.Message):
    __slots__ = ("rank", "local_rank", "node", "pid", "state", "exit_code", "reason", "gpu_indices", "last_heartbeat", "metrics", "phase", "phase_since", "unknown_since", "coordinates")
    RANK_FIELD_NUMBER: _ClassVar[int]
    LOCAL_RANK_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PHASE_SINCE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_SINCE_FIELD_NUMBER: _ClassVar[int]
    COORDINATES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    local_rank: int
    node: str
    pid: int
    state: RankState
    exit_code: int
    reason: str
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    last_heartbeat: _timestamp_pb2.Timestamp
    metrics: RankMetrics
    phase: RankPhase
    phase_since: _timestamp_pb2.Timestamp
    unknown_since: _timestamp_pb2.Timestamp
    coordinates: RankCoordinates
    def __init__(self, rank: _Optional[int] = ..., local_rank: _Optional[int] = ..., node: _Optional[str] = ..., pid: _Optional[int] = ..., state: _Optional[_Union[RankState, str]] = ..., exit_code: _Optional[int] = ..., reason: _Optional[str] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Union[RankMetrics, _Mapping]] = ..., phase: _Optional[_Union[RankPhase, str]] = ..., phase_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unknown_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., coordinates: _Optional[_Union[RankCoordinates, _Mapping]] = ...) -> None: ...

class Attempt(_message.Message):
    __slots__ = ("number", "state", "reason", "started", "ended", "resumed_from", "master_port", "ranks", "excluded_nodes", "replaced_nodes", "preempted")
    class ReplacedNodesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_NODES_FIELD_NUMBER: _ClassVar[int]
    REPLACED_NODES_FIELD_NUMBER: _ClassVar[int]
    PREEMPTED_FIELD_NUMBER: _ClassVar[int]
    number: int
    state: JobState
    reason: str
    started: _timestamp_pb2.Timestamp
    ended: _timestamp_pb2.Timestamp
    resumed_from: str
    master_port: int
    ranks: _containers.RepeatedCompositeFieldContainer[Rank]
    excluded_nodes: _containers.RepeatedScalarFieldContainer[str]
    replaced_nodes: _containers.ScalarMap[str, str]
    preempted: bool
    def __init__(self, number: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., started: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ended: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resumed_from: _Optional[str] = ..., master_port: _Optional[int] = ..., ranks: _Optional[_Iterable[_Union[Rank, _Mapping]]] = ..., excluded_nodes: _Optional[_Iterable[str]] = ..., replaced_nodes: _Optional[_Mapping[str, str]] = ..., preempted: _Optional[bool] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("spec", "state", "reason", "leader", "created", "attempts", "restarts_used")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_USED_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    state: JobState
    reason: str
    leader: str
    created: _timestamp_pb2.Timestamp
    attempts: _containers.RepeatedCompositeFieldContainer[Attempt]
    restarts_used: int
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., state: _Optional[_Union[JobState, str]] = ..., reason: _Optional[str] = ..., leader: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[_Iterable[_Union[Attempt, _Mapping]]] = ..., restarts_used: _Optional[int] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("seq", "job_name", "attempt", "kind", "time", "node", "rank", "message", "details", "metrics")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SEQ_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    job_name: str
    attempt: int
    kind: JobEventKind
    time: _timestamp_pb2.Timestamp
    node: str
    rank: int
    message: str
    details: _containers.ScalarMap[str, str]
    metrics: RankMetrics
    def __init__(self, seq: _Optional[int] = ..., job_name: _Optional[str] = ..., attempt: _Optional[int] = ..., kind: _Optional[_Union[JobEventKind, str]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., node: _Optional[str] = ..., rank: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ..., metrics: _Optional[_Union[RankMetrics, _Mapping]] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("offset", "text", "stream", "time")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    offset: int
    text: str
    stream: str
    time: _timestamp_pb2.Timestamp
    def __init__(self, offset: _Optional[int] = ..., text: _Optional[str] = ..., stream: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("tag", "step", "path", "size_bytes", "saved", "latest", "universal", "format")
    TAG_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAVED_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    UNIVERSAL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    tag: str
    step: int
    path: str
    size_bytes: int
    saved: _timestamp_pb2.Timestamp
    latest: bool
    universal: bool
    format: str
    def __init__(self, tag: _Optional[str] = ..., step: _Optional[int] = ..., path: _Optional[str] = ..., size_bytes: _Optional[int] = ..., saved: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., latest: _Optional[bool] = ..., universal: _Optional[bool] = ..., format: _Optional[str] = ...) -> None: ...
