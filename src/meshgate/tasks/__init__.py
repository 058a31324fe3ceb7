"""The task queue: durable storage and the workers that run what it accepts."""
