"""The teacher, the students, the registry and the original-checkpoint converter."""
from ._timm import register_with_timm
from .original import (CheckpointMismatchError, check_state_dict, from_original_state_dict,
                       to_original_state_dict)
from .pretrained import from_pretrained, read_pretrained_config, save_pretrained
from .registry import create_model, list_models
from .student import HDKDStudent
from .teacher import HDKDTeacher

register_with_timm()

__all__ = ["CheckpointMismatchError", "HDKDStudent", "HDKDTeacher", "check_state_dict",
           "create_model", "from_original_state_dict", "from_pretrained", "list_models",
           "read_pretrained_config", "save_pretrained", "to_original_state_dict"]
