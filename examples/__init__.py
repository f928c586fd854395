"""Examples to start from: `examples.tools` is a tools module for `--tools`."""
