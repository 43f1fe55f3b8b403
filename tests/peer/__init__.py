"""Peer agreement (issue 15, item 4): each analyzer against an independent re-implementation
of its paper's own code (:mod:`workbench.peer_rules`) on the same inputs."""
