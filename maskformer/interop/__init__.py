"""Interoperability with other MaskFormer implementations (Hugging Face transformers' hub format)."""

from .hf import (
    MismatchError,
    UnsupportedArchitectureError,
    check_fits,
    is_hf_checkpoint,
    load_hf_checkpoint,
    load_hf_state_dict,
)
from .metadata_file import add_metadata_file_config, register_metadata_file, write_metadata_file

__all__ = [
    "MismatchError",
    "UnsupportedArchitectureError",
    "check_fits",
    "is_hf_checkpoint",
    "load_hf_state_dict",
    "load_hf_checkpoint",
    "add_metadata_file_config",
    "register_metadata_file",
    "write_metadata_file",
]
