"""agents-controller: the one home of desired state (instances, ports, addresses, operations)."""
