"""The `cluster` step: a multi-node profile's Ray cluster, formed by `up --node NAME` on every node."""
