"""Federated learning: server loop, strategies, clients as devices, engines (in-process, Ray, Flower)."""
