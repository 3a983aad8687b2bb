"""tfyarn: train TensorFlow models on Spark and YARN clusters.

One TensorFlow role (chief, worker, parameter server, evaluator) runs per Spark executor,
launched as one barrier stage; roles exchange tensors over TensorFlow's gRPC runtime or
over tfyarn's own transports (gRPC, TCP, UCX for RDMA/InfiniBand).

>>> import tfyarn
>>> result = tfyarn.run(spark, train_fn, workers=2, ps=1, strategy="ps")  # doctest: +SKIP
"""

from tfyarn.cluster.launcher import RunResult, run
from tfyarn.errors import (
    AllocationError,
    ConfigError,
    RestartsExhaustedError,
    RoleFailedError,
    RoleLostError,
    TFYarnError,
    TransportError,
)
from tfyarn.node.context import NodeContext
from tfyarn.node.job import InputMode

__version__ = "0.1.0"

__all__ = [
    "AllocationError",
    "ConfigError",
    "InputMode",
    "NodeContext",
    "RestartsExhaustedError",
    "RoleFailedError",
    "RoleLostError",
    "RunResult",
    "TFYarnError",
    "TransportError",
    "__version__",
    "run",
]
