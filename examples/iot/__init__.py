"""The IoT ingestion pipeline: devices over MQTT into Distributary, validated, aggregated,
stored, alerted and replayable (examples/iot/README.md).  ``python -m examples.iot --help``."""
