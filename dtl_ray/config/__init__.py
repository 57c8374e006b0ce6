"""Pipeline configuration: the schema (one frozen dataclass per stage, `schema.py`) and its
loading from YAML with dotted overrides (`load.py`).

Unknown keys and wrong types raise `errors.ConfigError` naming the key.
"""

from dtl_ray.config.load import adapts, apply_overrides, from_dict, load_config, to_dict
from dtl_ray.config.schema import (
    DataConfig,
    DiscriminateConfig,
    DomainConfig,
    FinetuneConfig,
    ModelConfig,
    PipelineConfig,
    PretrainConfig,
    S3Config,
    ScalingConfig,
    ScoreConfig,
    SelectConfig,
    TrackingConfig,
)

__all__ = [
    "S3Config", "DomainConfig", "ModelConfig", "ScalingConfig", "DataConfig",
    "PretrainConfig", "DiscriminateConfig", "ScoreConfig", "SelectConfig",
    "FinetuneConfig", "TrackingConfig", "PipelineConfig", "load_config", "from_dict", "to_dict",
    "apply_overrides", "adapts",
]
