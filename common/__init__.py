"""The ground floor both the exporter and the validators stand on: error kinds and exit codes, the
artifact-directory contract, deterministic files, batching, quieting native libraries, the vela compiler."""
