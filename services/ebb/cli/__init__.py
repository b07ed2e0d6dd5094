"""The `ebb` command line: `ebb up` runs the local mesh; the other commands talk to its controller."""
