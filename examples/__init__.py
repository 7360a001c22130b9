"""Programs written on the public SDK: the quickstarts, and the IoT pipeline (``examples.iot``)."""
