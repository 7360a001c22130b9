"""Cluster metadata: the MetadataStore interface (store.py), its local (local_store.py)
and etcd (etcd_store.py over etcd_gateway.py) implementations, the cluster URL
(etcd_url.py), read-then-watch with resync (follow.py) and the factory that picks a
store from the configuration (open_store.py).  docs/cluster.md describes them."""
