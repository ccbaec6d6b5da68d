"""Compatibility re-exports: deployment targets now live in edgeseg.target (schema.py: the Target dataclass and
validation; loading.py: the TOML files) and the host probes in edgeseg.engine.host. New code imports from there.
"""

from edgeseg.engine.host import (_probe_nvidia_smi, _probe_pycuda, installed_tensorrt,  # noqa: F401
                                 parse_nvidia_smi, probe_cuda_device)
from edgeseg.target.loading import (_builtin_dir, _registry, list_targets, load_family, load_target,  # noqa: F401
                                    load_target_file, read_target_toml)
from edgeseg.target.schema import (KINDS, PRECISIONS, CudaDevice, JetPackRelease, PowerMode, Target,  # noqa: F401
                                   parse_target, target_from_device)
