"""The data node, split by role: ``node`` (sessions, fencing, maps, dispatch), ``admission`` (which
request each role answers how), ``master``, ``slave``, ``migration`` and ``moves``, ``log``, ``config``."""

from dimint.core.node.admission import ADMISSION, Answer, RequestKind
from dimint.core.node.config import NodeConfig, Role, TimerKey
from dimint.core.node.node import DataNode

__all__ = ["ADMISSION", "Answer", "DataNode", "NodeConfig", "RequestKind", "Role", "TimerKey"]
