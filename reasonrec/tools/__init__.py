"""The tool repository: classical recommenders behind one interface (see ``base.Tool``)."""
from reasonrec.tools import (  # noqa: F401  (registration)
    bprmf, dcnv2, gru4rec, lightgcn, lightsans, nextitnet, popularity, sasrec, xdeepfm,
)
from reasonrec.tools.base import (
    REGISTRY,
    Tool,
    ToolConfig,
    exclude_seen,
    make_config,
    tool_class,
)

__all__ = ["REGISTRY", "Tool", "ToolConfig", "exclude_seen", "make_config", "tool_class"]
