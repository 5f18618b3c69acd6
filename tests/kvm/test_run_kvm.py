"""`vmxlab run --backend kvm`: the launched guest continues on /dev/kvm with the same
exit handlers (kvm/run.py).

The reference is the simulated backend run on the same image and edits: the
console text must be the same, and so must the exits VMX makes under the VMCS
controls -- except CPUID and XSETBV, which exit unconditionally under VMX
(SDM Vol. 3C "Instructions That Cause VM Exits Unconditionally") but which KVM
answers from its own tables without an exit to user space.  I/O qualifications
are the SDM's ("Exit Qualification for I/O Instructions"), checked by hand in
tests/hypervisor/test_run.py for the same images.
"""
import json

from kvm_guest import needs_kvm
from vmxlab.cli import main
from vmxlab.guests.asm import asm
from vmxlab.hypervisor import image as IMG
from vmxlab.hypervisor.run import parse_edit, run_image
from vmxlab.kvm import system

IO_AND_HLT_EXITING = f"CPU_BASED_VM_EXEC_CONTROL={(1 << 24) | (1 << 7):#x}"
_KVM_ANSWERS = ("CPUID", "XSETBV")


def _both(image, **kw):
    return run_image(image, **kw), run_image(image, backend="kvm", **kw)


def _vmx_exits(r):
    return [e for e in r.exits if e["name"] not in _KVM_ANSWERS]


@needs_kvm
def test_io_and_hlt_image_same_console_on_both_backends():
    sim, kvm = _both(IMG.builtin("hello"))
    assert kvm.console == sim.console
    assert "hello: hypervisor signature vmxlab" in kvm.console    # KVM's CPUID table: the same hypervisor
    assert kvm.outcome == sim.outcome == "halted"
    assert [e["name"] for e in sim.exits] == ["CPUID"] and kvm.exits == []
    for reg in ("RBX", "RDX", "RSP", "CR3", "CS", "SS"):
        assert kvm.registers[reg] == sim.registers[reg], reg


@needs_kvm
def test_io_and_hlt_exiting_give_the_same_exits():
    edits = [parse_edit("or", IO_AND_HLT_EXITING)]
    sim, kvm = _both(IMG.builtin("hello"), edits=edits)
    assert kvm.console == sim.console and kvm.outcome == sim.outcome == "halted"
    assert _vmx_exits(kvm) == _vmx_exits(sim)
    names = [e["name"] for e in kvm.exits]
    assert names[-1] == "HLT" and set(names[:-1]) == {"IO_INSTRUCTION"}
    assert kvm.registers["RIP"] == sim.registers["RIP"] == kvm.exits[-1]["guest_rip"]


@needs_kvm
def test_builtin_workload_same_console_hypercalls_and_unload():
    # CPUID signature, MSR #GP injected by the handler, XSETBV, "ping" and "unload"
    # hypercalls, then CPUID on the processor without the hypervisor
    sim, kvm = _both(IMG.builtin("bluepill"))
    assert kvm.console == sim.console
    assert "back on the bare processor" in kvm.console and kvm.console.endswith("kernel: done\n")
    assert kvm.outcome == sim.outcome == "devirtualized"
    assert [e["name"] for e in _vmx_exits(kvm)] == [e["name"] for e in _vmx_exits(sim)] == \
        ["MSR_READ", "VMCALL", "VMCALL"]


@needs_kvm
def test_triple_fault_and_budgets_on_kvm():
    triple = asm("lea rax, [idtr]; lidt [rax]; ud2\n.balign 16\nidtr:\n.word 0\n.quad 0", IMG.FLAT_BASE)
    r = run_image(triple.code, backend="kvm")
    assert r.outcome == "shutdown" and r.exits[-1]["name"] == "TRIPLE_FAULT"
    out = asm("spin: out 0x80, al; jmp spin", IMG.FLAT_BASE)
    r = run_image(out.code, backend="kvm", max_exits=20, edits=[parse_edit("or", IO_AND_HLT_EXITING)])
    assert r.outcome == "budget exhausted" and len(r.exits) == 20
    assert {(e["qualification"], e["guest_rip"], e["instruction_length"]) for e in r.exits} == \
        {((0x80 << 16) | (1 << 6), IMG.FLAT_BASE, 2)}
    spin = asm("spin: jmp spin", IMG.FLAT_BASE)
    r = run_image(spin.code, backend="kvm", timeout=0.3)
    assert r.outcome == "budget exhausted" and "--timeout" in r.detail


@needs_kvm
def test_entry_failure_is_the_simulators_on_kvm(capsys):
    assert main(["run", "--builtin", "hello", "--backend", "kvm", "--set", "GUEST_RFLAGS=0", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "kvm" and doc["outcome"] == "entry failure"
    assert doc["exits"][0]["exit_reason"] == "0x80000021"


def test_missing_kvm_is_one_line_and_status_2(monkeypatch, capsys):
    monkeypatch.setattr(system, "KVM_PATH", "/nonexistent/kvm")
    monkeypatch.setattr(system, "_shared", None)
    assert main(["run", "--builtin", "hello", "--backend", "kvm"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "/nonexistent/kvm does not exist" in captured.err
    assert captured.out == ""



@needs_kvm
def test_memory_beyond_ram_is_an_ept_violation_on_both_backends():
    # an instruction fetch at 0x5000000 (RAM ends at 0x4000000): EPT violation, bit 2
    # (instruction fetch), bit 7 (guest-linear address valid), bit 8 (the access was to
    # the translated address) -- "Exit Qualification for EPT Violations"
    sim, kvm = _both(IMG.builtin("hello"), edits=[parse_edit("set", "GUEST_RIP=0x5000000")])
    assert sim.outcome == kvm.outcome == "stopped"
    assert [e for e in kvm.exits] == [e for e in sim.exits]
    e = kvm.exits[0]
    assert (e["name"], e["qualification"], e["guest_rip"], e["guest_linear_address"], e["guest_physical_address"]) \
        == ("EPT_VIOLATION", (1 << 2) | (1 << 7) | (1 << 8), 0x5000000, 0x5000000, 0x5000000)
    # a data read there: bit 0, at the same guest-physical address
    read = asm("mov rax, 0x5000010\nload: mov rax, qword ptr [rax]\nret", IMG.FLAT_BASE)
    sim, kvm = _both(read.code)
    for r in (sim, kvm):
        assert r.outcome == "stopped" and [x["name"] for x in _vmx_exits(r)] == ["EPT_VIOLATION"]
        x = _vmx_exits(r)[0]
        assert x["qualification"] & 7 == 1 and x["guest_physical_address"] == 0x5000010
        assert x["guest_rip"] == read.labels["load"]


@needs_kvm
def test_undefined_opcode_is_ud_on_both_backends():
    # 3FH (AAS) is not an instruction in 64-bit mode: #UD ("Instruction Set Reference":
    # "Invalid in 64-bit mode"); the kernel's handler prints the vector and halts
    sim, kvm = _both(b"\x3f")
    assert sim.outcome == kvm.outcome == "crashed" and "#UD" in kvm.detail
    assert kvm.console == sim.console and f"vector 0x6 rip {IMG.FLAT_BASE:#x}" in kvm.console


@needs_kvm
def test_kvm_machine_single_msrs_and_cpuid_table():
    from kvm_guest import long_mode_machine
    from vmxlab.kvm.run import cpuid_table
    with long_mode_machine("mov eax, 0x40000000; cpuid; hlt") as m:
        m.set_cpuid(cpuid_table(True))
        assert m.write_msr(0x174, 0x10) and m.read_msr(0x174) == 0x10       # IA32_SYSENTER_CS
        assert m.read_msr(0x4B564D99) is None and not m.write_msr(0x4B564D99, 1)
        assert m.run().name == "HLT"
        st = m.get_state()
        assert b"".join(st[r].to_bytes(4, "little") for r in ("RBX", "RCX", "RDX")) == b"vmxlab\0\0\0\0\0\0"
        assert st["RAX"] == 0x40000000
