"""The SDK's I/O shell (anyio): one connection per broker, and the cluster view."""
