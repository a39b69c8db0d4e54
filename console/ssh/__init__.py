"""Reaching agents over SSH: `gantry up`/`gantry down`, tunnels for the console, and the
restart of a node's agent. Agents listen on their node's loopback only; the console
reaches each through a port forward of an SSH connection (asyncssh)."""
