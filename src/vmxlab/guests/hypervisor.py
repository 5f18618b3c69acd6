"""The machine-code hypervisor (vmx_hypervisor.asm), loaded as the built-in kernel's
driver: see the assembly source for what it does and the results it leaves."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

from .asm import Assembly, asm
from .kernel import boot, image

DRIVER_BASE = 0x200000
STATUS = {0: "ok", 1: "VMXON failed", 2: "VMCLEAR failed", 3: "VMPTRLD failed", 4: "VMLAUNCH failed",
          5: "VMRESUME failed", 6: "unexpected VM exit"}


@lru_cache(maxsize=1)
def driver() -> Assembly:
    source = resources.files(__package__).joinpath("vmx_hypervisor.asm").read_text()
    return asm(source, DRIVER_BASE)


def install(machine) -> Assembly:
    """Boot-ready kernel with the hypervisor as its driver."""
    kernel = boot(machine)
    drv = driver()
    machine.load(DRIVER_BASE, drv.code)
    machine.mem.write64(kernel.labels["driver_ptr"], drv.labels["hv_driver"])
    return drv
