"""The runtime dispatcher: event intake, the durable queue's workers, delivery."""
