from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetPolicyInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyInfo(_message.Message):
    __slots__ = ("model_name", "model_version", "env_id", "observation_dim", "action_dim", "action_low", "action_high", "context_length", "max_episode_steps", "default_target_return", "execution_provider", "loaded_versions", "canary_version", "canary_fraction")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_DIM_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    ACTION_LOW_FIELD_NUMBER: _ClassVar[int]
    ACTION_HIGH_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_EPISODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TARGET_RETURN_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    LOADED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_FRACTION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    env_id: str
    observation_dim: int
    action_dim: int
    action_low: _containers.RepeatedScalarFieldContainer[float]
    action_high: _containers.RepeatedScalarFieldContainer[float]
    context_length: int
    max_episode_steps: int
    default_target_return: float
    execution_provider: str
    loaded_versions: _containers.RepeatedScalarFieldContainer[str]
    canary_version: str
    canary_fraction: float
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., env_id: _Optional[str] = ..., observation_dim: _Optional[int] = ..., action_dim: _Optional[int] = ..., action_low: _Optional[_Iterable[float]] = ..., action_high: _Optional[_Iterable[float]] = ..., context_length: _Optional[int] = ..., max_episode_steps: _Optional[int] = ..., default_target_return: _Optional[float] = ..., execution_provider: _Optional[str] = ..., loaded_versions: _Optional[_Iterable[str]] = ..., canary_version: _Optional[str] = ..., canary_fraction: _Optional[float] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("target_return", "resume", "model_version")
    TARGET_RETURN_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    target_return: float
    resume: ResumeState
    model_version: str
    def __init__(self, target_return: _Optional[float] = ..., resume: _Optional[_Union[ResumeState, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ResumeState(_message.Message):
    __slots__ = ("model_version", "next_step", "history", "total_reward")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEXT_STEP_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REWARD_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    next_step: int
    history: _containers.RepeatedCompositeFieldContainer[StepRecord]
    total_reward: float
    def __init__(self, model_version: _Optional[str] = ..., next_step: _Optional[int] = ..., history: _Optional[_Iterable[_Union[StepRecord, _Mapping]]] = ..., total_reward: _Optional[float] = ...) -> None: ...

class StepRecord(_message.Message):
    __slots__ = ("observation", "action", "return_to_go")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RETURN_TO_GO_FIELD_NUMBER: _ClassVar[int]
    observation: _containers.RepeatedScalarFieldContainer[float]
    action: _containers.RepeatedScalarFieldContainer[float]
    return_to_go: float
    def __init__(self, observation: _Optional[_Iterable[float]] = ..., action: _Optional[_Iterable[float]] = ..., return_to_go: _Optional[float] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_id", "target_return", "context_length", "idle_timeout_s", "model_version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_RETURN_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    target_return: float
    context_length: int
    idle_timeout_s: int
    model_version: str
    def __init__(self, session_id: _Optional[str] = ..., target_return: _Optional[float] = ..., context_length: _Optional[int] = ..., idle_timeout_s: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class ActRequest(_message.Message):
    __slots__ = ("session_id", "step", "observation", "reward")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: int
    observation: _containers.RepeatedScalarFieldContainer[float]
    reward: float
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[int] = ..., observation: _Optional[_Iterable[float]] = ..., reward: _Optional[float] = ...) -> None: ...

class ActResponse(_message.Message):
    __slots__ = ("session_id", "step", "action", "return_to_go")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RETURN_TO_GO_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: int
    action: _containers.RepeatedScalarFieldContainer[float]
    return_to_go: float
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[int] = ..., action: _Optional[_Iterable[float]] = ..., return_to_go: _Optional[float] = ...) -> None: ...

class ActBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ActRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ActRequest, _Mapping]]] = ...) -> None: ...

class ActBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ActResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[ActResponse, _Mapping]]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("steps", "total_reward")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REWARD_FIELD_NUMBER: _ClassVar[int]
    steps: int
    total_reward: float
    def __init__(self, steps: _Optional[int] = ..., total_reward: _Optional[float] = ...) -> None: ...
