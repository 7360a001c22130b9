"""The record-batch format shared by the SDK and the broker (docs/record-format.md)."""
