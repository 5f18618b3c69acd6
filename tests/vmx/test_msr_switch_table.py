"""The MSRs VM entry and VM exit switch under controls, each row against the SDM's
"Loading Guest Control Registers, Debug Registers, and MSRs", "Saving Control
Registers, Debug Registers, and MSRs" and "Loading Host Control Registers, Debug
Registers, MSRs" (transfer functions on plain dicts)."""
import pytest

from vmxlab.arch import controls as C
from vmxlab.arch import fields as F
from vmxlab.vmx import transfer as T

PERF, BNDCFGS, RTIT, LBR, PKRS = 0x38F, 0xD90, 0x570, 0x14CE, 0x6E1

# (MSR, guest field, VM-entry load control, VM-exit control, host field or None for "clear")
ROWS = [
    (PERF, F.GUEST_IA32_PERF_GLOBAL_CTRL, C.VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL,
     C.VM_EXIT_LOAD_IA32_PERF_GLOBAL_CTRL, F.HOST_IA32_PERF_GLOBAL_CTRL),
    (BNDCFGS, F.GUEST_BNDCFGS, C.VM_ENTRY_LOAD_BNDCFGS, C.VM_EXIT_CLEAR_BNDCFGS, None),
    (RTIT, F.GUEST_IA32_RTIT_CTL, C.VM_ENTRY_LOAD_IA32_RTIT_CTL, C.VM_EXIT_CLEAR_IA32_RTIT_CTL, None),
    (LBR, F.GUEST_IA32_LBR_CTL, C.VM_ENTRY_LOAD_IA32_LBR_CTL, C.VM_EXIT_CLEAR_IA32_LBR_CTL, None),
    (PKRS, F.GUEST_IA32_PKRS, C.VM_ENTRY_LOAD_IA32_PKRS, C.VM_EXIT_LOAD_IA32_PKRS, F.HOST_IA32_PKRS),
]


@pytest.mark.parametrize("msr,guest,entry,exit_ctl,host", ROWS)
def test_each_msr_is_loaded_by_its_entry_control_only(msr, guest, entry, exit_ctl, host):
    writes = {}
    T.load_guest_msrs({F.VM_ENTRY_CONTROLS: 0, guest: 0x55}, writes.__setitem__)
    assert writes == {}
    T.load_guest_msrs({F.VM_ENTRY_CONTROLS: entry, guest: 0x55}, writes.__setitem__)
    assert writes == {msr: 0x55}


@pytest.mark.parametrize("msr,guest,entry,exit_ctl,host", ROWS)
def test_each_msr_is_loaded_or_cleared_by_its_exit_control(msr, guest, entry, exit_ctl, host):
    writes = {}
    v = {F.VM_EXIT_CONTROLS: exit_ctl, guest: 0x55}
    if host is not None:
        v[host] = 0x66
    T.load_host_msrs(v, writes.__setitem__)
    assert writes == {msr: 0x66 if host is not None else 0}
    writes.clear()
    T.load_host_msrs({**v, F.VM_EXIT_CONTROLS: 0}, writes.__setitem__)
    assert writes == {}


def test_what_every_exit_saves_depends_on_the_processors_allowed_settings():
    # BNDCFGS, RTIT_CTL, LBR_CTL: saved when the processor supports either control's
    # 1-setting; PKRS when it supports "load PKRS" on entry; PERF_GLOBAL_CTRL only
    # under "save IA32_PERF_GLOBAL_CTRL"
    msrs = {PERF: 1, BNDCFGS: 2, RTIT: 3, LBR: 4, PKRS: 5}
    none = T.saved_msrs(0, 0)
    assert none == ()
    bnd_by_exit = T.saved_msrs(0, C.VM_EXIT_CLEAR_BNDCFGS)
    assert [s.msr for s in bnd_by_exit] == [BNDCFGS]
    pkrs_by_exit = T.saved_msrs(0, C.VM_EXIT_LOAD_IA32_PKRS)
    assert pkrs_by_exit == ()
    every = T.saved_msrs(C.VM_ENTRY_LOAD_BNDCFGS | C.VM_ENTRY_LOAD_IA32_RTIT_CTL | C.VM_ENTRY_LOAD_IA32_LBR_CTL
                         | C.VM_ENTRY_LOAD_IA32_PKRS | C.VM_ENTRY_LOAD_IA32_PERF_GLOBAL_CTRL, 0)
    v = {F.VM_EXIT_CONTROLS: 0}
    T.save_guest_msrs(v, every, msrs.__getitem__)
    assert v == {F.VM_EXIT_CONTROLS: 0, F.GUEST_BNDCFGS: 2, F.GUEST_IA32_RTIT_CTL: 3, F.GUEST_IA32_LBR_CTL: 4,
                 F.GUEST_IA32_PKRS: 5}
    v = {F.VM_EXIT_CONTROLS: C.VM_EXIT_SAVE_IA32_PERF_GLOBAL_CTRL}
    T.save_guest_msrs(v, (), msrs.__getitem__)
    assert v[F.GUEST_IA32_PERF_GLOBAL_CTRL] == 1 and len(v) == 2
