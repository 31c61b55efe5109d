"""The shared data stages of the flagship chain: download -> matte -> backbones (ONNX
teachers) -> features -> shards. Each module is one DAG stage; none imports a model family."""
