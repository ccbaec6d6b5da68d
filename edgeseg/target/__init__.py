"""Deployment targets: `schema` (the Target dataclass, validation; pure) and `loading` (the TOML files, names,
aliases, families). The package is not called `targets` because the data folder `edgeseg/targets/` takes that
name. Probing the local GPU and TensorRT is engine.host's job."""
