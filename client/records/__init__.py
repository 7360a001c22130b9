"""The record-batch format shared by the SDK and the broker (docs/record-format.md).

``header`` validates and stamps batches (all the broker needs), ``builder``
encodes records into a batch, ``compression`` compresses a batch's records as a
whole, and ``decoder`` turns batches back into records on the client.
"""
