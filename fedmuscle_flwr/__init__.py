"""FedMuscle: federated multi-task representation learning across heterogeneous models.

The library holds everything that is not Flower wiring: the Muscle loss and its baselines
(:mod:`fedmuscle_flwr.loss`), the server's per-user payloads
(:mod:`fedmuscle_flwr.aggregation`), conversion to and from Flower records
(:mod:`fedmuscle_flwr.wire`), client models, tasks and data.
"""

__version__ = "0.1.0"
