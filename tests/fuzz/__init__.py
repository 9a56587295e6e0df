"""Fuzzing of every RPC of the scheduler with hypothesis-generated protobuf messages."""
