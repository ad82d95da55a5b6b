"""The tool repository: classical recommenders behind one interface (see ``base.Tool``)."""
from reasonrec.tools import bprmf, gru4rec, lightgcn, popularity, sasrec  # noqa: F401  (registration)
from reasonrec.tools.base import (
    REGISTRY,
    Tool,
    ToolConfig,
    exclude_seen,
    make_config,
    tool_class,
)

__all__ = ["REGISTRY", "Tool", "ToolConfig", "exclude_seen", "make_config", "tool_class"]
