"""The node (composition root) and the picows adapter."""
