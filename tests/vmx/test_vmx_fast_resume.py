"""VMRESUME from machine-code host code takes the client's fast path from the #UD
hook (VmxCpu._fast_resume): what the entry leaves for the instruction boundary (an
interrupt window that is open at once) and a stop requested during it (an observer
of the VM-entry failure it ends in) are honoured as on the general path."""
import struct

from vmxlab.arch import controls as C
from vmxlab.arch import fields as F
from vmxlab.guests.asm import asm
from vmxlab.machine import Kind, StopReason
from vmxlab.vmx.cpu import VmxCpu
from vmxlab.vmx.setup import fields_from_state

from bench.vmx import _flat_machine
from vhelpers import ADVANCE_RIP

GUEST, HOST, VMXON, VMCS, OUT = 0x70000, 0x48000, 0x100000, 0x101000, 0x90000

GUEST_CODE = """
    vmcall
after: inc r9
    inc r9
    hlt
"""
# on the VMCALL exit: advance GUEST_RIP, write the field given in r12 with r13, VMRESUME;
# on any other exit: record the exit reason, GUEST_RIP and the guest's R9, HLT
HOST_CODE = """
    mov rbx, 0x4402
    vmread rax, rbx
    cmp eax, 18
    jne other
""" + ADVANCE_RIP + """    vmwrite r12, r13
    vmresume
    hlt
other:
    mov qword ptr [rsp], rax
    mov rbx, 0x681e
    vmread rax, rbx
    mov qword ptr [rsp + 8], rax
    mov qword ptr [rsp + 16], r9
    hlt
"""


def _start(field: int, value: int, fast: bool = True):
    m = _flat_machine()
    for page in (VMXON, VMCS):
        m.load(page, struct.pack("<I", m.profile.revision_id))
    guest = asm(GUEST_CODE, GUEST)
    m.load(GUEST, guest.code)
    m.load(HOST, asm(HOST_CODE, HOST).code)
    m.load(OUT, bytes(24))
    cpu = VmxCpu(m)
    if not fast:
        m.fast_client = None
    cpu.vmxon(VMXON)
    cpu.vmclear(VMCS)
    cpu.vmptrld(VMCS)
    values = fields_from_state(m.get_state(), m.profile, host_rip=HOST, host_rsp=OUT)
    values.update({F.GUEST_RIP: GUEST, F.GUEST_RSP: 0x7F000, F.GUEST_RFLAGS: 0x202})
    for enc, v in values.items():
        cpu.vmwrite(enc, v)
    if callable(value):
        value = value(values)
    for name, v in (("R9", 0), ("R12", field), ("R13", value)):
        cpu.set_gpr(name, v)
    cpu.vmlaunch()
    return cpu, m, guest


def test_an_interrupt_window_open_at_the_entry_exits_before_the_first_guest_instruction():
    for fast in (True, False):
        taken = []
        cpu, m, guest = _start(F.CPU_BASED_VM_EXEC_CONTROL,
                               lambda v: v[F.CPU_BASED_VM_EXEC_CONTROL] | C.CPU_BASED_INTR_WINDOW_EXITING, fast)
        if fast:
            m.fast_client = (lambda f: (lambda *a: taken.append(a[2]) or f(*a)))(m.fast_client)
        assert cpu.run(time_budget=10).reason == StopReason.HALTED
        assert m.mem.read64(OUT) == 7                       # interrupt window
        assert m.mem.read64(OUT + 8) == guest.labels["after"]
        assert m.mem.read64(OUT + 16) == 0                  # no guest instruction ran
        assert (Kind.VMRESUME in taken) == fast


def test_a_stop_requested_during_the_entry_ends_the_run_there():
    for fast in (True, False):
        cpu, m, _guest = _start(F.GUEST_ACTIVITY_STATE, 7, fast)     # not an activity state: exit 33
        seen = []
        cpu.observers.append(lambda c, e: e.reason >> 31 and (seen.append(e.reason), c.stop("entry failed")))
        stop = cpu.run(time_budget=10)
        assert seen == [0x80000000 | 33]
        assert stop.reason == StopReason.EVENT and stop.detail == "entry failed"
        assert stop.rip == m.rip == HOST                   # host state loaded, no host code run yet
        assert m.mem.read64(OUT) == 0


def test_requests_armed_in_root_operation_do_not_survive_an_entry_whose_controls_ask_for_none():
    """VM entry re-arms windows, MTF and the deadline from the controls (_rearm); it
    skips that work only when no control asks and nothing is armed."""
    from vhelpers import Bench
    for arm in (lambda m: m.request_interrupt_window(True), lambda m: m.request_nmi_window(True),
                lambda m: m.request_mtf(True), lambda m: m.set_tsc_deadline(0)):
        b = Bench()
        launch = b.cpu.vmlaunch
        b.cpu.vmlaunch = lambda: (arm(b.m), launch())    # armed in VMX root operation, then VMLAUNCH
        cpu = b.start("sti\ncpuid\nhlt", host=b.record_and_resume())
        assert cpu.run(time_budget=5).reason == StopReason.HALTED, arm
        assert [e.basic for e in b.exits] == [10]


MOV_SS_HOST = """
""" + ADVANCE_RIP + """    mov ax, ss
    mov ss, ax
    vmresume               # blocked by MOV SS: VMfailValid(26)
    setz byte ptr [rsp]
    mov rbx, 0x4400
    vmread rax, rbx
    mov qword ptr [rsp + 8], rax
    hlt
"""


def test_vmresume_right_after_mov_ss_fails_with_error_26():
    for fast in (True, False):
        cpu, m, _guest = _start(F.GUEST_RIP, 0, fast)
        m.load(HOST, asm(MOV_SS_HOST, HOST).code)
        assert cpu.run(time_budget=10).reason == StopReason.HALTED
        assert m.mem.read(OUT, 1) == b"\x01" and m.mem.read64(OUT + 8) == 26
        assert cpu.exit_count == 1
