"""Opening /dev/kvm, ioctl calls, and the errors of the KVM backend.

Errors:
- KvmUnavailable (a BadInput): /dev/kvm is missing, not accessible, or refuses
  (API version, a capability the backend needs, VM or vCPU creation).  One line;
  the command line prints it and exits with status 2.
- KvmError: an ioctl failed where it should not have (a host problem or a bug);
  the message names the ioctl and the errno.
Values that KVM refuses in a processor state are BadInput (machine.py).
"""
from __future__ import annotations

import ctypes
import errno as _errno
import fcntl
import os

from ..errors import BadInput
from . import abi

# The device; VMXLAB_KVM_DEVICE names another (e.g. to check how vmxlab behaves without KVM).
KVM_PATH = os.environ.get("VMXLAB_KVM_DEVICE", "/dev/kvm")


class KvmUnavailable(BadInput):
    """/dev/kvm cannot be used here; the message says why, in one line."""


class KvmError(RuntimeError):
    """An ioctl on /dev/kvm failed unexpectedly."""


def errname(e: int) -> str:
    return f"{_errno.errorcode.get(e, 'errno')} {e}: {os.strerror(e)}"


def ioctl(fd: int, request: int, arg, what: str) -> int:
    """ioctl with a ctypes structure (read and written back) or an int argument."""
    try:
        if isinstance(arg, int):
            return fcntl.ioctl(fd, request, arg)
        return fcntl.ioctl(fd, request, arg, True)
    except OSError as e:
        raise KvmError(f"{what} failed ({errname(e.errno)})") from None


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong]
_libc.ioctl.restype = ctypes.c_int


def ioctl_ulong(fd: int, request: int, value: int) -> int:
    """ioctl with an unsigned long argument.  fcntl.ioctl passes ints as C int, which
    cannot hold e.g. the KVM_SET_TSS_ADDR address 0xfffbd000 (notes/kvm.md)."""
    r = _libc.ioctl(fd, request, value)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


class Kvm:
    """The open /dev/kvm: API version, capabilities, vCPU mmap size, supported CPUID."""

    def __init__(self, path: str | None = None):
        path = KVM_PATH if path is None else path
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(f"{path} does not exist: no KVM here (load kvm_intel or kvm_amd, "
                                 "or use a machine with virtualization)") from None
        except PermissionError:
            raise KvmUnavailable(f"{path}: permission denied (join the group that owns it, usually 'kvm')") from None
        except OSError as e:
            raise KvmUnavailable(f"{path} cannot be opened ({errname(e.errno)})") from None
        try:
            try:
                api = fcntl.ioctl(self.fd, abi.KVM_GET_API_VERSION, 0)
            except OSError as e:
                raise KvmUnavailable(f"{path} is not a KVM device (KVM_GET_API_VERSION: {errname(e.errno)})") from None
            if api != abi.KVM_API_VERSION:
                raise KvmUnavailable(f"{path} speaks KVM API version {api}; vmxlab needs {abi.KVM_API_VERSION}")
            for cap, name, why in ((abi.KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "the run watchdog"),
                                   (abi.KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest memory"),
                                   (abi.KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "the vCPU's CPUID")):
                if not self.check(cap):
                    raise KvmUnavailable(f"{path} lacks {name}, which {why} needs")
            self.vcpu_mmap_size = fcntl.ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0)
        except BaseException:
            os.close(self.fd)
            raise
        self._cpuid = None

    def check(self, cap: int, fd: int | None = None) -> int:
        """KVM_CHECK_EXTENSION on /dev/kvm (or a VM fd): 0 when absent."""
        try:
            return fcntl.ioctl(self.fd if fd is None else fd, abi.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return 0

    def supported_cpuid(self):
        """KVM_GET_SUPPORTED_CPUID: the entries KVM can give a vCPU (cached)."""
        if self._cpuid is None:
            n = 64
            while True:
                c = abi.cpuid2(n)
                try:
                    fcntl.ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, c, True)
                    break
                except OSError as e:
                    if e.errno != _errno.E2BIG or n >= 4096:
                        raise KvmError(f"KVM_GET_SUPPORTED_CPUID failed ({errname(e.errno)})") from None
                    n *= 2
            self._cpuid = [c.entries[i] for i in range(c.nent)]
        return self._cpuid

    def create_vm(self) -> int:
        try:
            return fcntl.ioctl(self.fd, abi.KVM_CREATE_VM, 0)
        except OSError as e:
            raise KvmUnavailable(f"{self.path} refuses to create a VM (KVM_CREATE_VM: {errname(e.errno)})") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_shared: Kvm | None = None


def shared_kvm() -> Kvm:
    """One open /dev/kvm for the process (its fd stays open: VMs hold their own)."""
    global _shared
    if _shared is None:
        _shared = Kvm()
    return _shared


def unavailable_reason() -> str | None:
    """None when a VM with one vCPU can be made here, else the one-line reason."""
    try:
        from .machine import KvmMachine
        KvmMachine().close()
    except KvmUnavailable as e:
        return str(e)
    return None
