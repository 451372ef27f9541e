from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_UINT16: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_RAW: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_TIFF: _ClassVar[ImageFormat]

class Preset(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRESET_UNSPECIFIED: _ClassVar[Preset]
    PRESET_DEFAULT: _ClassVar[Preset]
    PRESET_PAPER: _ClassVar[Preset]

class Init(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INIT_UNSPECIFIED: _ClassVar[Init]
    INIT_CONTENT: _ClassVar[Init]
    INIT_NOISE: _ClassVar[Init]
    INIT_IMAGE: _ClassVar[Init]

class Optimizer(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPTIMIZER_UNSPECIFIED: _ClassVar[Optimizer]
    OPTIMIZER_LBFGS: _ClassVar[Optimizer]
    OPTIMIZER_ADAM: _ClassVar[Optimizer]

class Pooling(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POOLING_UNSPECIFIED: _ClassVar[Pooling]
    POOLING_MAX: _ClassVar[Pooling]
    POOLING_AVERAGE: _ClassVar[Pooling]

class ColorPreservation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLOR_PRESERVATION_UNSPECIFIED: _ClassVar[ColorPreservation]
    COLOR_PRESERVATION_NONE: _ClassVar[ColorPreservation]
    COLOR_PRESERVATION_LUMINANCE: _ClassVar[ColorPreservation]
    COLOR_PRESERVATION_COLOR_STATISTICS: _ClassVar[ColorPreservation]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_FLOAT32: _ClassVar[Precision]
    PRECISION_BFLOAT16: _ClassVar[Precision]
    PRECISION_FLOAT16: _ClassVar[Precision]

class TokenState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOKEN_STATE_UNSPECIFIED: _ClassVar[TokenState]
    TOKEN_STATE_NOT_NEEDED: _ClassVar[TokenState]
    TOKEN_STATE_MISSING: _ClassVar[TokenState]
    TOKEN_STATE_ACCEPTED: _ClassVar[TokenState]
    TOKEN_STATE_INVALID: _ClassVar[TokenState]
    TOKEN_STATE_EXPIRED: _ClassVar[TokenState]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_UINT16: DataType
DATA_TYPE_FLOAT32: DataType
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_RAW: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_TIFF: ImageFormat
PRESET_UNSPECIFIED: Preset
PRESET_DEFAULT: Preset
PRESET_PAPER: Preset
INIT_UNSPECIFIED: Init
INIT_CONTENT: Init
INIT_NOISE: Init
INIT_IMAGE: Init
OPTIMIZER_UNSPECIFIED: Optimizer
OPTIMIZER_LBFGS: Optimizer
OPTIMIZER_ADAM: Optimizer
POOLING_UNSPECIFIED: Pooling
POOLING_MAX: Pooling
POOLING_AVERAGE: Pooling
COLOR_PRESERVATION_UNSPECIFIED: ColorPreservation
COLOR_PRESERVATION_NONE: ColorPreservation
COLOR_PRESERVATION_LUMINANCE: ColorPreservation
COLOR_PRESERVATION_COLOR_STATISTICS: ColorPreservation
PRECISION_UNSPECIFIED: Precision
PRECISION_FLOAT32: Precision
PRECISION_BFLOAT16: Precision
PRECISION_FLOAT16: Precision
TOKEN_STATE_UNSPECIFIED: TokenState
TOKEN_STATE_NOT_NEEDED: TokenState
TOKEN_STATE_MISSING: TokenState
TOKEN_STATE_ACCEPTED: TokenState
TOKEN_STATE_INVALID: TokenState
TOKEN_STATE_EXPIRED: TokenState

class Image(_message.Message):
    __slots__ = ("encoded", "raw")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    raw: RawImage
    def __init__(self, encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ...) -> None: ...

class RawImage(_message.Message):
    __slots__ = ("height", "width", "channels", "dtype", "data")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    dtype: DataType
    data: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., dtype: _Optional[_Union[DataType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class LayerWeight(_message.Message):
    __slots__ = ("layer", "weight")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    layer: str
    weight: float
    def __init__(self, layer: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class Options(_message.Message):
    __slots__ = ("preset", "size", "iterations", "content_weight", "style_weight", "tv_weight", "content_layers", "style_layers", "style_scale", "init", "optimizer", "learning_rate", "pooling", "seed", "color_preservation", "num_scales", "scales", "precision")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STYLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TV_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTENT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    STYLE_LAYERS_FIELD_NUMBER: _ClassVar[int]
    STYLE_SCALE_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    POOLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    COLOR_PRESERVATION_FIELD_NUMBER: _ClassVar[int]
    NUM_SCALES_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    preset: Preset
    size: int
    iterations: int
    content_weight: float
    style_weight: float
    tv_weight: float
    content_layers: _containers.RepeatedCompositeFieldContainer[LayerWeight]
    style_layers: _containers.RepeatedCompositeFieldContainer[LayerWeight]
    style_scale: float
    init: Init
    optimizer: Optimizer
    learning_rate: float
    pooling: Pooling
    seed: int
    color_preservation: ColorPreservation
    num_scales: int
    scales: _containers.RepeatedScalarFieldContainer[int]
    precision: Precision
    def __init__(self, preset: _Optional[_Union[Preset, str]] = ..., size: _Optional[int] = ..., iterations: _Optional[int] = ..., content_weight: _Optional[float] = ..., style_weight: _Optional[float] = ..., tv_weight: _Optional[float] = ..., content_layers: _Optional[_Iterable[_Union[LayerWeight, _Mapping]]] = ..., style_layers: _Optional[_Iterable[_Union[LayerWeight, _Mapping]]] = ..., style_scale: _Optional[float] = ..., init: _Optional[_Union[Init, str]] = ..., optimizer: _Optional[_Union[Optimizer, str]] = ..., learning_rate: _Optional[float] = ..., pooling: _Optional[_Union[Pooling, str]] = ..., seed: _Optional[int] = ..., color_preservation: _Optional[_Union[ColorPreservation, str]] = ..., num_scales: _Optional[int] = ..., scales: _Optional[_Iterable[int]] = ..., precision: _Optional[_Union[Precision, str]] = ...) -> None: ...

class Style(_message.Message):
    __slots__ = ("image", "weight")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    image: Image
    weight: float
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., weight: _Optional[float] = ...) -> None: ...

class RegionStyle(_message.Message):
    __slots__ = ("label", "style_index")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STYLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    label: int
    style_index: int
    def __init__(self, label: _Optional[int] = ..., style_index: _Optional[int] = ...) -> None: ...

class RegionMask(_message.Message):
    __slots__ = ("labels", "regions")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    labels: Image
    regions: _containers.RepeatedCompositeFieldContainer[RegionStyle]
    def __init__(self, labels: _Optional[_Union[Image, _Mapping]] = ..., regions: _Optional[_Iterable[_Union[RegionStyle, _Mapping]]] = ...) -> None: ...

class StylizeRequest(_message.Message):
    __slots__ = ("content", "styles", "mask", "options", "init_image", "output_format", "preview_interval", "preview_size")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    STYLES_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    INIT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    content: Image
    styles: _containers.RepeatedCompositeFieldContainer[Style]
    mask: RegionMask
    options: Options
    init_image: Image
    output_format: ImageFormat
    preview_interval: int
    preview_size: int
    def __init__(self, content: _Optional[_Union[Image, _Mapping]] = ..., styles: _Optional[_Iterable[_Union[Style, _Mapping]]] = ..., mask: _Optional[_Union[RegionMask, _Mapping]] = ..., options: _Optional[_Union[Options, _Mapping]] = ..., init_image: _Optional[_Union[Image, _Mapping]] = ..., output_format: _Optional[_Union[ImageFormat, str]] = ..., preview_interval: _Optional[int] = ..., preview_size: _Optional[int] = ...) -> None: ...

class StylizeResponse(_message.Message):
    __slots__ = ("queued", "started", "progress", "result")
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    queued: Queued
    started: Started
    progress: Progress
    result: Result
    def __init__(self, queued: _Optional[_Union[Queued, _Mapping]] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ...) -> None: ...

class Queued(_message.Message):
    __slots__ = ("job_id", "position", "queue_length")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    position: int
    queue_length: int
    def __init__(self, job_id: _Optional[str] = ..., position: _Optional[int] = ..., queue_length: _Optional[int] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("job_id", "device", "total_iterations", "height", "width", "queued_seconds", "batch_size")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    QUEUED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    device: str
    total_iterations: int
    height: int
    width: int
    queued_seconds: float
    batch_size: int
    def __init__(self, job_id: _Optional[str] = ..., device: _Optional[str] = ..., total_iterations: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., queued_seconds: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("iteration", "total_iterations", "losses", "elapsed_seconds", "eta_seconds", "scale_index", "scale_count", "preview")
    class LossesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITERATION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCALE_INDEX_FIELD_NUMBER: _ClassVar[int]
    SCALE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    iteration: int
    total_iterations: int
    losses: _containers.ScalarMap[str, float]
    elapsed_seconds: float
    eta_seconds: float
    scale_index: int
    scale_count: int
    preview: Image
    def __init__(self, iteration: _Optional[int] = ..., total_iterations: _Optional[int] = ..., losses: _Optional[_Mapping[str, float]] = ..., elapsed_seconds: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., scale_index: _Optional[int] = ..., scale_count: _Optional[int] = ..., preview: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("job_id", "image", "settings", "losses", "elapsed_seconds", "iterations")
    class LossesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    image: Image
    settings: Options
    losses: _containers.ScalarMap[str, float]
    elapsed_seconds: float
    iterations: int
    def __init__(self, job_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., settings: _Optional[_Union[Options, _Mapping]] = ..., losses: _Optional[_Mapping[str, float]] = ..., elapsed_seconds: _Optional[float] = ..., iterations: _Optional[int] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Range(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_pixels", "max_message_bytes", "queue_capacity", "max_running_jobs", "max_jobs_per_client", "max_styles", "max_input_pixels", "max_batch_jobs", "job_memory_bytes", "progress_rate", "max_regions", "max_held_bytes")
    MAX_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    MAX_STYLES_FIELD_NUMBER: _ClassVar[int]
    MAX_INPUT_PIXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_JOBS_FIELD_NUMBER: _ClassVar[int]
    JOB_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_REGIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    max_pixels: int
    max_message_bytes: int
    queue_capacity: int
    max_running_jobs: int
    max_jobs_per_client: int
    max_styles: int
    max_input_pixels: int
    max_batch_jobs: int
    job_memory_bytes: int
    progress_rate: float
    max_regions: int
    max_held_bytes: int
    def __init__(self, max_pixels: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., queue_capacity: _Optional[int] = ..., max_running_jobs: _Optional[int] = ..., max_jobs_per_client: _Optional[int] = ..., max_styles: _Optional[int] = ..., max_input_pixels: _Optional[int] = ..., max_batch_jobs: _Optional[int] = ..., job_memory_bytes: _Optional[int] = ..., progress_rate: _Optional[float] = ..., max_regions: _Optional[int] = ..., max_held_bytes: _Optional[int] = ...) -> None: ...

class AllowedValues(_message.Message):
    __slots__ = ("layers", "presets", "inits", "optimizers", "poolings", "color_preservations", "precisions", "output_formats", "size", "iterations", "num_scales", "style_scale")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    INITS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZERS_FIELD_NUMBER: _ClassVar[int]
    POOLINGS_FIELD_NUMBER: _ClassVar[int]
    COLOR_PRESERVATIONS_FIELD_NUMBER: _ClassVar[int]
    PRECISIONS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_SCALES_FIELD_NUMBER: _ClassVar[int]
    STYLE_SCALE_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedScalarFieldContainer[str]
    presets: _containers.RepeatedScalarFieldContainer[Preset]
    inits: _containers.RepeatedScalarFieldContainer[Init]
    optimizers: _containers.RepeatedScalarFieldContainer[Optimizer]
    poolings: _containers.RepeatedScalarFieldContainer[Pooling]
    color_preservations: _containers.RepeatedScalarFieldContainer[ColorPreservation]
    precisions: _containers.RepeatedScalarFieldContainer[Precision]
    output_formats: _containers.RepeatedScalarFieldContainer[ImageFormat]
    size: Range
    iterations: Range
    num_scales: Range
    style_scale: Range
    def __init__(self, layers: _Optional[_Iterable[str]] = ..., presets: _Optional[_Iterable[_Union[Preset, str]]] = ..., inits: _Optional[_Iterable[_Union[Init, str]]] = ..., optimizers: _Optional[_Iterable[_Union[Optimizer, str]]] = ..., poolings: _Optional[_Iterable[_Union[Pooling, str]]] = ..., color_preservations: _Optional[_Iterable[_Union[ColorPreservation, str]]] = ..., precisions: _Optional[_Iterable[_Union[Precision, str]]] = ..., output_formats: _Optional[_Iterable[_Union[ImageFormat, str]]] = ..., size: _Optional[_Union[Range, _Mapping]] = ..., iterations: _Optional[_Union[Range, _Mapping]] = ..., num_scales: _Optional[_Union[Range, _Mapping]] = ..., style_scale: _Optional[_Union[Range, _Mapping]] = ...) -> None: ...

class PresetOptions(_message.Message):
    __slots__ = ("preset", "options")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    preset: Preset
    options: Options
    def __init__(self, preset: _Optional[_Union[Preset, str]] = ..., options: _Optional[_Union[Options, _Mapping]] = ...) -> None: ...

class GetServerInfoResponse(_message.Message):
    __slots__ = ("version", "device", "weights", "precision", "limits", "defaults", "presets", "allowed", "queued_jobs", "running_jobs", "auth_required", "cuda_graphs", "token", "compiled_network")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_JOBS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    CUDA_GRAPHS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    COMPILED_NETWORK_FIELD_NUMBER: _ClassVar[int]
    version: str
    device: str
    weights: str
    precision: Precision
    limits: Limits
    defaults: Options
    presets: _containers.RepeatedCompositeFieldContainer[PresetOptions]
    allowed: AllowedValues
    queued_jobs: int
    running_jobs: int
    auth_required: bool
    cuda_graphs: bool
    token: TokenState
    compiled_network: bool
    def __init__(self, version: _Optional[str] = ..., device: _Optional[str] = ..., weights: _Optional[str] = ..., precision: _Optional[_Union[Precision, str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., defaults: _Optional[_Union[Options, _Mapping]] = ..., presets: _Optional[_Iterable[_Union[PresetOptions, _Mapping]]] = ..., allowed: _Optional[_Union[AllowedValues, _Mapping]] = ..., queued_jobs: _Optional[int] = ..., running_jobs: _Optional[int] = ..., auth_required: _Optional[bool] = ..., cuda_graphs: _Optional[bool] = ..., token: _Optional[_Union[TokenState, str]] = ..., compiled_network: _Optional[bool] = ...) -> None: ...
