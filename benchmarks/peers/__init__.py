"""The Exosphere workloads on peer systems (Celery+Redis, Dask distributed, Temporal); see ``run_all.py``.

The ``*_bench.py`` scripts and ``peer_common.py`` run with ``benchmarks/.peers/venv/bin/python`` (they import
``peer_common`` as a top-level module), not inside the project's environment.
"""
