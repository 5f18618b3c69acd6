"""/dev/kvm missing or refusing: a one-line BadInput (no /dev/kvm needed)."""
import os
import subprocess
import sys

import pytest

from vmxlab.errors import BadInput
from vmxlab.kvm import KvmUnavailable
from vmxlab.kvm.system import Kvm


def test_unavailable_device_is_a_one_line_bad_input(tmp_path):
    with pytest.raises(KvmUnavailable) as e:
        Kvm(str(tmp_path / "kvm"))
    assert isinstance(e.value, BadInput) and "does not exist" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(KvmUnavailable, match="is not a KVM device"):
        Kvm("/dev/null")


def test_bench_without_kvm_is_one_line_and_status_2():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, VMXLAB_KVM_DEVICE="/nonexistent/kvm")
    r = subprocess.run([sys.executable, "-m", "bench.kvm"], cwd=root, env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "/nonexistent/kvm does not exist" in r.stderr
