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


class FakeKvm:
    """Answers the /dev/kvm ioctls of Kvm.__init__ for a device opened on /dev/null."""

    def __init__(self, api=12, caps=(), create_vm_errno=None):
        self.api, self.caps, self.create_vm_errno = api, set(caps), create_vm_errno

    def __call__(self, fd, request, arg=0, mutate=False):
        from vmxlab.kvm import abi
        if request == abi.KVM_GET_API_VERSION:
            return self.api
        if request == abi.KVM_CHECK_EXTENSION:
            return 1 if arg in self.caps else 0
        if request == abi.KVM_GET_VCPU_MMAP_SIZE:
            return 12288
        if request == abi.KVM_CREATE_VM:
            raise OSError(self.create_vm_errno, os.strerror(self.create_vm_errno))
        raise OSError(25, "Inappropriate ioctl for device")


@pytest.fixture
def fake(monkeypatch):
    from vmxlab.kvm import system

    def install(**kw):
        monkeypatch.setattr(system.fcntl, "ioctl", FakeKvm(**kw))
    return install


def test_wrong_api_version(fake):
    fake(api=11)
    with pytest.raises(KvmUnavailable, match="speaks KVM API version 11; vmxlab needs 12"):
        Kvm("/dev/null")


def test_missing_capability(fake):
    from vmxlab.kvm import abi
    fake(caps={abi.KVM_CAP_USER_MEMORY, abi.KVM_CAP_EXT_CPUID})
    with pytest.raises(KvmUnavailable, match="lacks KVM_CAP_IMMEDIATE_EXIT, which the run watchdog needs"):
        Kvm("/dev/null")


def test_vm_creation_refused(fake):
    from vmxlab.kvm import abi
    fake(caps={abi.KVM_CAP_USER_MEMORY, abi.KVM_CAP_EXT_CPUID, abi.KVM_CAP_IMMEDIATE_EXIT}, create_vm_errno=16)
    kvm = Kvm("/dev/null")
    with pytest.raises(KvmUnavailable) as e:
        kvm.create_vm()
    assert str(e.value) == "/dev/null refuses to create a VM (KVM_CREATE_VM: EBUSY 16: Device or resource busy)"
    kvm.close()
