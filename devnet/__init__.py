"""A whole thinkmesh network on one machine, and the command line that wires every role."""
