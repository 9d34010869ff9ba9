"""A Dask scheduler runs whatever code it is sent. The local cluster ldmflow starts for `task_runner: dask`
must not take work from anyone else on the host: it speaks mutual TLS with certificates of its own and
serves no pages over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request

import distributed
import pytest
from distributed.security import Security

from flows.runners import task_runner
from tasks.common.config import config_from_dict


@pytest.mark.faults
def test_the_local_dask_cluster_refuses_clients_without_its_certificate(fault):
    cfg = config_from_dict({"orchestration": {"task_runner": "dask", "workers": 1}})
    with task_runner(cfg.orchestration) as runner:
        client = runner.client
        address = client.scheduler.address
        assert address.startswith("tls://127.0.0.1:"), address
        assert client.submit(sum, [1, 2]).result() == 3  # its own client gets in
        http_port = client.scheduler_info()["services"]["dashboard"]  # Dask's HTTP server, always started
        for page in ("info/main/workers.html", "json/identity.json", "metrics", "health"):
            with pytest.raises(urllib.error.HTTPError, match="404"):
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/{page}", timeout=5)

        with pytest.raises((OSError, TimeoutError)):
            distributed.Client(address.replace("tls://", "tcp://"), timeout=3)
        with pytest.raises((OSError, TimeoutError, ValueError)):  # TLS, but not its certificate
            distributed.Client(address, security=Security.temporary(), timeout=3)
        fault("a Dask client without the cluster's certificate", "refused (plain TCP and a foreign TLS cert)")
