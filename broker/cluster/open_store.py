"""Open the metadata store a broker is configured with.

No cluster URL: the local store in the data dir (the embedded single node).  An
``etcd://HOST:PORT[,HOST:PORT...]/PREFIX`` URL: the etcd store under that prefix.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from broker.cluster.etcd_store import open_etcd_store
from broker.cluster.etcd_url import parse_etcd_url
from broker.cluster.local_store import LOCAL_STORE_FILE, open_local_store
from broker.cluster.store import MetadataStore


@asynccontextmanager
async def open_metadata_store(
    cluster_url: str | None, data_dir: Path, *, local_address: str | None = None
) -> AsyncIterator[MetadataStore]:
    """The store for ``cluster_url`` (None: the local store in ``data_dir``);
    ``local_address`` binds the etcd store's outgoing connections.

    Raises InvalidConfigError for a bad URL, StorageError when the local store file
    cannot be read.
    """
    if cluster_url is None:
        async with open_local_store(data_dir / LOCAL_STORE_FILE) as local_store:
            yield local_store
        return
    url = parse_etcd_url(cluster_url)
    async with open_etcd_store(url, local_address=local_address) as etcd_store:
        yield etcd_store
