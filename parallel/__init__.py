"""Runs over many processes with torchrun: the process group (`world`) and what ranks exchange
(`reduce`). Everything here is the identity for a plain `python train.py`."""
from maskednas.parallel.reduce import (average_, average_batchnorm_statistics, average_gradients,
                                       broadcast_buffers, data_parallel, host_totals, plain_batchnorm, sum_,
                                       sync_batchnorm)
from maskednas.parallel.world import (barrier, broadcast, fork_rng, gather, is_main, launched,
                                      launched_rank, local_rank, main_first, on_main, peer_lost, rank,
                                      rank_device, size, start, started, stop)

__all__ = ["average_", "average_batchnorm_statistics", "average_gradients", "broadcast_buffers",
           "data_parallel", "host_totals", "plain_batchnorm", "sum_", "sync_batchnorm",
           "barrier", "broadcast", "fork_rng", "gather", "is_main", "launched", "launched_rank",
           "local_rank", "main_first", "on_main", "peer_lost", "rank", "rank_device", "size",
           "start", "started", "stop"]
