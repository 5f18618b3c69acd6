"""/dev/kvm missing or refusing: a one-line BadInput (no /dev/kvm needed)."""
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
