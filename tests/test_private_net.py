"""Local runs can be kept off every outside interface: a real TF gRPC server in a private netns."""
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, child_env
from train import private_net

SERVER = """
import sys, time, tensorflow as tf
port = int(sys.argv[1])
server = tf.distribute.Server(tf.train.ClusterSpec({"worker": [f"127.0.0.1:{port}"]}),
                              job_name="worker", task_index=0, protocol="grpc", start=True)
print("up", flush=True)
time.sleep(60)
"""


def _outside_address() -> str | None:
    """An address of this machine that is not loopback (where an outsider would connect)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        return line.split()[3].split("/")[0]
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reachable(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


@pytest.mark.parametrize("isolated", [False, True])
def test_grpc_server_reachable_from_outside_only_without_the_private_netns(isolated):
    if isolated and not private_net.available():
        if os.environ.get("CI"):
            pytest.fail("private network namespaces must work in CI (root + unshare)")
        pytest.skip("no private network namespace here (needs root and unshare)")
    outside = _outside_address()
    if outside is None:
        pytest.skip("this machine has no non-loopback IPv4 address to test from")
    port = _free_port()
    cmd = [sys.executable, "-c", SERVER, str(port)]
    proc = subprocess.Popen(private_net.wrap(cmd) if isolated else cmd, cwd=ROOT, env=child_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        time.sleep(1)
        # TF ignores the 127.0.0.1 of the spec and listens on all interfaces: isolation must come from the netns.
        assert _reachable(outside, port) is (not isolated)
        assert _reachable("127.0.0.1", port) is (not isolated)  # the host's loopback is another namespace's
        inner = private_net.wrap(["python3", "-c", f"import socket; s=socket.socket(); s.settimeout(2); "
                                  f"print(s.connect_ex(('127.0.0.1', {port})))"])
        if isolated:  # a second private namespace cannot see it either: each run is alone
            assert subprocess.run(inner, capture_output=True, text=True).stdout.strip() != "0"
    finally:
        proc.kill()
        proc.wait()


def test_wrapped_command_sees_only_loopback():
    if not private_net.available():
        if os.environ.get("CI"):
            pytest.fail("private network namespaces must work in CI (root + unshare)")
        pytest.skip("no private network namespace here")
    out = subprocess.run(private_net.wrap(["ip", "-o", "link", "show", "up"]), capture_output=True, text=True)
    assert out.returncode == 0
    assert [line.split(":")[1].strip() for line in out.stdout.splitlines()] == ["lo"]


@pytest.mark.slow
def test_horovod_gloo_job_runs_inside_a_private_netns(results):
    if not private_net.available():
        if os.environ.get("CI"):
            pytest.fail("private network namespaces must work in CI (root + unshare)")
        pytest.skip("no private network namespace here")
    from tests.conftest import BIN, records

    cmd = private_net.wrap([str(BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", sys.executable,
                            "-m", "train.sync_allreduce", "--width", "0.25", "--per-worker-batch", "16",
                            "--steps-per-epoch", "6", "--warmup-steps", "2", "--study", "t",
                            "--results-dir", str(results)])
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rec] = records(results)
    assert rec["num_workers"] == 2 and len(set(rec["weights_sha256"])) == 1
