"""The conformance kit: ``exosphere conformance -- COMMAND...`` checks a runtime written in any language.

It runs a real scheduler (``exosphere-server``, SQLite in a temporary directory) and puts a recording proxy
(``proxy.py``) between it and the runtime, so every obligation is judged from the wire with only the public
protocol. The nodes a runtime must host are in ``spec.py``; docs/protocol.md ("Conformance") documents them.

Modules: ``kit`` (the order of the checks), ``checks_basic`` / ``checks_session`` / ``checks_lifecycle`` and
``audit`` (the obligations), ``recording`` and ``proxy`` (the wire), ``scheduler`` and ``process`` (the child
processes), ``graphs`` (the graphs run), ``command`` (the CLI).
"""

from __future__ import annotations

from exosphere.conformance.context import Outcome
from exosphere.conformance.kit import OBLIGATIONS, KitOptions, Report, run_conformance
from exosphere.conformance.spec import NODES, NodeSpec

__all__ = ["NODES", "OBLIGATIONS", "KitOptions", "NodeSpec", "Outcome", "Report", "run_conformance"]
