"""Fault-injection tests: real scheduler and runtime processes killed, stopped and blocked."""
