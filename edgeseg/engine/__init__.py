"""TensorRT engines: the build plan (pure, no TensorRT import) and, on machines that have it, the builder."""
