"""Usage and plans: metrics computed from the graph and recorded events."""
