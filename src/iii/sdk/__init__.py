"""The worker SDK: the client (:mod:`.client`) behind ``import iii``."""
