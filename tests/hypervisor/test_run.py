"""`vmxlab run IMAGE` on the simulated processor (issue: run a guest image).

Expected exits are worked out from the guest code and the SDM, never copied from
the run's output:
- CPUID exits unconditionally (Vol. 3C "Instructions That Cause VM Exits
  Unconditionally"), exit reason 10, qualification 0, VM-exit instruction length 2
  (0F A2);
- IN/OUT exit under "unconditional I/O exiting" (primary processor-based control,
  bit 24), exit reason 30, qualification per "Exit Qualification for I/O
  Instructions": bits 2:0 size - 1, bit 3 direction (1 = IN), bit 4 string, bit 5
  REP, bit 6 operand encoding (1 = immediate), bits 31:16 port;
- HLT exits under "HLT exiting" (bit 7), exit reason 12, length 1 (F4);
- a triple fault causes a VM exit with reason 2 ("Other Causes of VM Exits");
- a control bit whose allowed-1 setting is 0 fails VMLAUNCH with VMfailValid 7
  ("VM entry with invalid control field(s)"); RFLAGS bit 1 = 0 in the guest-state
  area fails VM entry with exit reason 33 and bit 31 set ("Checks on Guest RIP,
  RFLAGS, and SSP", "VM-Entry Failures During or After Loading Guest State").
The ELF files here are packed by hand (struct, field by field from the ELF-64
Object File Format), not by the module under test.
"""
import json
import struct
from importlib import resources

import pytest

from vmxlab.arch import controls as C
from vmxlab.caps import load
from vmxlab.cli import main
from vmxlab.guests.asm import asm
from vmxlab.guests.kernel import image as kernel_image
from vmxlab.hypervisor import image as IMG
from vmxlab.hypervisor.bluepill import HV_MEMORY, boot_to_load_point, load_hypervisor, scene
from vmxlab.hypervisor.run import parse_edit, run_image

BANNER = "vmxlab kernel: long mode\n"
DONE = "kernel: done\n"
IO_EXITING = 1 << 24            # "Unconditional I/O exiting"
HLT_EXITING = 1 << 7            # "HLT exiting"


def status(argv) -> int:
    """main()'s exit status; argparse usage errors exit through SystemExit."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def elf(segments, entry, *, ident=None, e_type=2, machine=62, phentsize=56, phnum=None, extra_phdrs=()):
    """An ELF64 executable packed field by field: segments = [(vaddr, bytes, memsz, flags)]."""
    n = len(segments) + len(extra_phdrs)
    phdrs, body, offset = b"", b"", 0x1000
    for vaddr, data, memsz, flags in segments:
        phdrs += struct.pack("<IIQQQQQQ", 1, flags, offset, vaddr, vaddr, len(data), memsz, 0x1000)
        body += data + bytes(-len(data) % 0x1000)
        offset += len(data) + (-len(data) % 0x1000)
    for p in extra_phdrs:
        phdrs += p
    ident = ident if ident is not None else b"\x7fELF" + bytes((2, 1, 1, 0)) + bytes(8)
    header = ident + struct.pack("<HHIQQQIHHHHHH", e_type, machine, 1, entry, 64, 0, 0, 64, phentsize,
                                 n if phnum is None else phnum, 64, 0, 0)
    head = header + phdrs
    return head + bytes(0x1000 - len(head)) + body


# the ELF of the issue: CPUID, OUT to the UART, return to the kernel
ELF_BASE = 0x2000000
PROGRAM = asm("""
    mov eax, 0x40000000
do_cpuid:
    cpuid
    mov dx, 0x3f8
    mov al, 0x41
do_out_dx:
    out dx, al
do_out_imm:
    out 0xe9, al
    mov al, 0x0a
do_out_nl:
    out dx, al
    ret
""", ELF_BASE)
LAB = PROGRAM.labels


@pytest.fixture(scope="module")
def elf_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "prog.elf"
    path.write_bytes(elf([(ELF_BASE, PROGRAM.code, len(PROGRAM.code), 5)], ELF_BASE))
    return str(path)


def test_elf_cpuid_out_and_return(elf_file):
    r = run_image(elf_file)
    assert r.kind == "elf" and r.entry == ELF_BASE
    assert r.console == BANNER + "A\n" + DONE
    # without I/O exiting only CPUID exits
    assert [(e["reason"], e["qualification"], e["guest_rip"], e["instruction_length"]) for e in r.exits] == \
        [(10, 0, LAB["do_cpuid"], 2)]
    assert r.exits[0]["name"] == "CPUID" and r.exits[0]["entry_failure"] is False
    assert r.outcome == "halted" and r.ok             # the kernel's cli; hlt after "kernel: done"
    assert r.registers["RBX"] == int.from_bytes(b"vmxl", "little")   # the handler's signature
    assert r.registers["CR3"] == 0x20000 and r.registers["CS"] == 0x08


def test_elf_with_io_exiting(elf_file):
    r = run_image(elf_file, edits=[parse_edit("or", f"CPU_BASED_VM_EXEC_CONTROL={IO_EXITING:#x}")])
    assert r.console == BANNER + "A\n" + DONE         # the handler passes the OUTs to the UART
    first = [(e["name"], e["qualification"], e["guest_rip"], e["instruction_length"]) for e in r.exits[:4]]
    assert first == [
        ("CPUID", 0, LAB["do_cpuid"], 2),
        ("IO_INSTRUCTION", 0x3F8 << 16, LAB["do_out_dx"], 1),            # OUT DX, AL: 1 byte, DX encoding
        ("IO_INSTRUCTION", (0xE9 << 16) | (1 << 6), LAB["do_out_imm"], 2),  # OUT imm8, AL
        ("IO_INSTRUCTION", 0x3F8 << 16, LAB["do_out_nl"], 1),
    ]
    # then the kernel prints "kernel: done": per byte IN AL, DX from the LSR (0x3FD) then OUT to THR
    rest = r.exits[4:]
    assert len(rest) == 2 * len(DONE)
    lsr = (0x3FD << 16) | (1 << 3)
    assert [e["qualification"] for e in rest] == [lsr, 0x3F8 << 16] * len(DONE)
    k = kernel_image()
    assert all(k.address <= e["guest_rip"] < k.address + len(k.code) for e in rest)
    assert r.edits[0][:3] == ("CPU_BASED_VM_EXEC_CONTROL", "or", IO_EXITING) and r.edits[0][3] & IO_EXITING


def test_flat_binary_uses_the_kernel_services():
    prog = asm("""
        push rbx
        mov rbx, rdi
        lea rsi, [msg]
        call qword ptr [rbx + 8]
        pop rbx
        ret
    .balign 4096
    msg:
        .asciz "flat: hello\\n"
    """, IMG.FLAT_BASE)
    r = run_image(prog.code)
    assert r.kind == "flat" and r.entry == IMG.FLAT_BASE == 0x1000000
    assert r.console == BANNER + "flat: hello\n" + DONE
    assert r.exits == [] and r.outcome == "halted"


def test_hlt_exiting_from_the_command_line():
    hello = IMG.builtin("hello")
    prog = asm(resources.files("vmxlab.guests").joinpath("hello.asm").read_text(), IMG.FLAT_BASE)
    assert prog.code == hello.segments[0].data
    hlt = prog.labels["hello_halt"] + 1                               # cli; hlt
    plain = run_image(hello)
    assert all(e["name"] != "HLT" for e in plain.exits) and plain.outcome == "halted"
    r = run_image(hello, edits=[parse_edit("or", f"CPU_BASED_VM_EXEC_CONTROL={HLT_EXITING:#x}")])
    assert [(e["reason"], e["guest_rip"], e["instruction_length"]) for e in r.exits] == \
        [(10, prog.labels["hello_cpuid"], 2), (12, hlt, 1)]
    assert r.outcome == "halted" and r.registers["RIP"] == hlt      # the exit left RIP at the HLT
    assert r.console == plain.console and "hypervisor signature vmxlab" in r.console


def test_invalid_control_bit_fails_vmlaunch_with_the_rule_named():
    p = load("skylake-client")
    assert not p.allowed("PIN_BASED_VM_EXEC_CONTROL")[1] & 0x100       # bit 8: allowed-1 setting 0
    r = run_image(IMG.builtin("hello"), cpu_profile="skylake-client",
                  edits=[parse_edit("or", "PIN_BASED_VM_EXEC_CONTROL=0x100")])
    assert r.outcome == "vmfail" and r.launch_error == 7 and not r.ok
    assert "ctrl.pin.allowed1" in [v.id for v in r.violations]
    assert r.exits == [] and r.console == BANNER


def test_invalid_guest_state_is_a_vm_entry_failure():
    r = run_image(IMG.builtin("hello"), edits=[parse_edit("set", "GUEST_RFLAGS=0")])
    assert r.outcome == "entry failure"
    assert [(e["reason"], e["exit_reason"], e["entry_failure"]) for e in r.exits] == [(33, 0x80000021, True)]
    assert "guest.rflags.reserved_bit1" in [v.id for v in r.violations]
    assert "guest.rflags.reserved_bit1" in r.detail


def test_exit_budget_stops_a_runaway_guest():
    loop = asm("spin: cpuid; jmp spin", IMG.FLAT_BASE)
    r = run_image(loop.code, max_exits=50)
    assert r.outcome == "budget exhausted" and "50" in r.detail
    assert len(r.exits) == 50 and {(e["name"], e["guest_rip"]) for e in r.exits} == {("CPUID", IMG.FLAT_BASE)}
    assert r.registers["RIP"] == IMG.FLAT_BASE            # stopped at the 51st CPUID, unhandled


def test_timeout_stops_a_guest_that_makes_no_exits():
    spin = asm("spin: jmp spin", IMG.FLAT_BASE)
    r = run_image(spin.code, timeout=0.3)
    assert r.outcome == "budget exhausted" and "--timeout" in r.detail and r.exits == []


TRIPLE = asm("""
    lea rax, [idtr]
    lidt [rax]
    ud2
.balign 16
idtr:
    .word 0
    .quad 0
""", IMG.FLAT_BASE)


def test_triple_fault_is_a_shutdown():
    # #UD with an IDT of limit 0: the IDT entry is beyond the limit (#GP), so is #GP's
    # (#DF), so is #DF's: triple fault, a VM exit (reason 2)
    r = run_image(TRIPLE.code)
    assert r.outcome == "shutdown" and not r.ok
    assert r.exits[-1]["reason"] == 2 and r.exits[-1]["name"] == "TRIPLE_FAULT"


def test_cli_run_text_json_and_status(elf_file, capsys):
    assert main(["run", elf_file, "--trace"]) == 0
    out = capsys.readouterr().out
    assert "A\n" in out and "outcome: halted" in out and "kvm_exit: vcpu 0 reason CPUID" in out
    assert main(["run", elf_file, "--json", "--or", f"CPU_BASED_VM_EXEC_CONTROL={HLT_EXITING:#x}",
                 "--andnot", "CPU_BASED_VM_EXEC_CONTROL=0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "vmxlab-run/1" and doc["backend"] == "sim" and doc["outcome"] == "halted"
    assert doc["image"] == {"name": elf_file, "kind": "elf", "entry": hex(ELF_BASE),
                            "segments": [{"address": hex(ELF_BASE), "file_bytes": len(PROGRAM.code),
                                          "memory_bytes": len(PROGRAM.code)}]}
    assert doc["console"] == BANNER + "A\n" + DONE
    assert [e["name"] for e in doc["exits"]] == ["CPUID", "HLT"]          # the kernel's HLT exits
    e = doc["exits"][0]
    assert e["reason"] == 10 and e["qualification"] == "0x0" and e["guest_rip"] == hex(LAB["do_cpuid"])
    assert set(e) >= {"instruction_length", "instruction_info", "guest_linear_address", "guest_physical_address",
                      "intr_info", "intr_error_code", "exit_reason"}
    assert [x["op"] for x in doc["edits"]] == ["or", "andnot"]
    assert set(doc["registers"]) >= {"RAX", "RIP", "RSP", "RFLAGS", "CR3"}
    # failures: status 1
    assert main(["run", elf_file, "--set", "GUEST_RFLAGS=0", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["outcome"] == "entry failure" and doc["check"]["exit_reason"] == 33
    assert "guest.rflags.reserved_bit1" in [v["rule"] for v in doc["check"]["violations"]]
    assert main(["run", "--builtin", "hello", "--max-exits", "0"]) == 1


def test_builtin_workload_devirtualizes(capsys):
    assert main(["run", "--builtin", "bluepill"]) == 0
    out = capsys.readouterr().out
    assert "back on the bare processor" in out and "outcome: devirtualized" in out


# ---- bad input: status 2, one line naming the file, field or value ---------------------------------
CODE = PROGRAM.code


@pytest.mark.parametrize("name,data,words", [
    ("empty.bin", b"", ["empty"]),
    ("short.elf", b"\x7fELF\x02\x01\x01", ["truncated"]),
    ("class32.elf", elf([(ELF_BASE, CODE, len(CODE), 5)], ELF_BASE, ident=b"\x7fELF" + bytes((1, 1, 1, 0)) + bytes(8)),
     ["ELFCLASS64"]),
    ("bigendian.elf", elf([(ELF_BASE, CODE, len(CODE), 5)], ELF_BASE,
                          ident=b"\x7fELF" + bytes((2, 2, 1, 0)) + bytes(8)), ["little-endian"]),
    ("arm.elf", elf([(ELF_BASE, CODE, len(CODE), 5)], ELF_BASE, machine=183), ["EM_X86_64", "183"]),
    ("pie.elf", elf([(ELF_BASE, CODE, len(CODE), 5)], ELF_BASE, e_type=3), ["ET_DYN"]),
    ("phdrs.elf", elf([(ELF_BASE, CODE, len(CODE), 5)], ELF_BASE)[:0x60], ["truncated", "program headers"]),
    ("nophdr.elf", elf([], ELF_BASE, phnum=0), ["no program headers"]),
    ("phsize.elf", elf([(ELF_BASE, CODE, len(CODE), 5)], ELF_BASE, phentsize=32), ["program header size"]),
    ("kernel.elf", elf([(0x8000, CODE, len(CODE), 5)], 0x8000), ["overlaps", "kernel", "0x8000"]),
    ("hv.elf", elf([(0x400000, CODE, len(CODE), 5)], 0x400000), ["overlaps", "hypervisor", "0x400000"]),
    ("scene.elf", elf([(0x300800, CODE, len(CODE), 5)], 0x300800), ["overlaps", "scene"]),
    ("huge.elf", elf([(ELF_BASE, CODE, 0x8000000, 5)], ELF_BASE), ["beyond the end of RAM"]),
    ("wrap.elf", elf([(0xFFFFFFFFFFFFF000, CODE, len(CODE), 5)], 0xFFFFFFFFFFFFF000), ["beyond the end of RAM"]),
    ("entry.elf", elf([(ELF_BASE, CODE, len(CODE), 5)], ELF_BASE + 0x10000), ["entry point", hex(ELF_BASE + 0x10000)]),
    ("overlap.elf", elf([(ELF_BASE, CODE, 0x2000, 5), (ELF_BASE + 0x1000, CODE, len(CODE), 6)], ELF_BASE),
     ["overlaps another PT_LOAD"]),
    ("interp.elf", elf([(ELF_BASE, CODE, len(CODE), 5)], ELF_BASE,
                       extra_phdrs=[struct.pack("<IIQQQQQQ", 3, 4, 0, 0, 0, 0, 0, 1)]), ["PT_INTERP"]),
    ("filesz.elf", elf([(ELF_BASE, CODE, 4, 5)], ELF_BASE), ["p_filesz", "p_memsz"]),
    ("toobig.bin", b"\x90" * (IMG.RAM_SIZE - IMG.FLAT_BASE + 1), ["beyond the end of RAM"]),
])
def test_bad_images_exit_2_with_one_line(tmp_path, capsys, name, data, words):
    path = tmp_path / name
    path.write_bytes(data)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("args,words", [
    (["--set", "NO_SUCH_FIELD=1"], ["unknown VMCS field", "NO_SUCH_FIELD"]),
    (["--or", "GUEST_CS_SELECTOR=0x10000"], ["0x10000", "GUEST_CS_SELECTOR", "16 bits"]),
    (["--or", "PIN_BASED_VM_EXEC_CONTROL=0x100000000"], ["0x100000000", "32 bits"]),
    (["--set", "GUEST_RIP"], ["FIELD=VALUE"]),
    (["--andnot", "=5"], ["FIELD=VALUE"]),
    (["--set", "GUEST_RIP=0xzz"], ["0xzz", "not a number"]),
    (["--set", "GUEST_RIP=-1"], ["-0x1", "GUEST_RIP"]),
    (["--cpu", "penryn", "--set", "EPT_POINTER=0"], ["EPT_POINTER", "penryn"]),
    (["--cpu", "no-such-cpu"], ["no-such-cpu"]),
    (["--max-exits", "-3"], ["-3"]),
    (["--timeout", "0"], ["'0'"]),
    (["--backend", "xen"], ["xen"]),
])
def test_bad_options_exit_2_with_one_line(elf_file, capsys, args, words):
    assert status(["run", elf_file, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    for w in words:
        assert w in err, err


def test_missing_file_and_no_image(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nothing.elf")]) == 2
    assert "nothing.elf" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert main(["run", "--builtin", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


# ---- the memory map the loader promises ----------------------------------------------------------
def test_reserved_areas_cover_what_the_scene_and_hypervisor_use():
    assert len(scene().code) <= IMG.SCENE_SIZE
    m, cpu, sc, _ = boot_to_load_point(load(None))
    load_hypervisor(m, cpu, sc)
    hv = range(HV_MEMORY, HV_MEMORY + IMG.HV_SIZE)
    for field in ("MSR_BITMAP", "HOST_RSP"):
        assert cpu.vmread(field) in hv
    # the EPT tables: every paging-structure page reached from the EPT pointer
    pml4 = cpu.vmread("EPT_POINTER") & ~0xFFF
    assert pml4 in hv
    pdpt = m.mem.read64(pml4) & 0xFFFFFFFFFF000
    assert pdpt in hv and all((m.mem.read64(pdpt + 8 * i) & 0xFFFFFFFFFF000) in hv
                              for i in range(512) if m.mem.read64(pdpt + 8 * i) & 7 and
                              not m.mem.read64(pdpt + 8 * i) & 0x80)


def test_image_writer_round_trip(tmp_path):
    hello = IMG.builtin("hello")
    assert IMG.main(["hello", str(tmp_path / "h.elf")]) == 0
    assert IMG.main(["hello", str(tmp_path / "h.bin"), "--flat"]) == 0
    e, f = IMG.read(str(tmp_path / "h.elf")), IMG.read(str(tmp_path / "h.bin"))
    assert e.kind == "elf" and f.kind == "flat" and e.entry == f.entry == hello.entry == IMG.FLAT_BASE
    assert e.segments[0].data == f.segments[0].data == hello.segments[0].data


def test_two_segment_elf_with_bss():
    code = asm("""
        mov rsi, 0x3000000
        mov rax, qword ptr [rsi + 16]
        test rax, rax
        jnz bad
        call qword ptr [rdi + 8]
        ret
    bad:
        ud2
    """, ELF_BASE)
    data = b"two segments\n\0"
    img = IMG.parse(elf([(ELF_BASE, code.code, len(code.code), 5), (0x3000000, data, 0x2000, 6)], ELF_BASE))
    assert [(s.address, len(s.data), s.memsz) for s in img.segments] == \
        [(ELF_BASE, len(code.code), len(code.code)), (0x3000000, len(data), 0x2000)]
    r = run_image(img)
    assert r.console == BANNER + "two segments\n" + DONE and r.outcome == "halted"


def test_edits_are_parsed_by_any_field_name():
    assert parse_edit("or", "CPU_BASED_VM_EXEC_CONTROL=0x80") == ("CPU_BASED_VM_EXEC_CONTROL", "or", 0x80)
    assert parse_edit("or", "Primary processor-based VM-execution controls=0x80")[0] == "CPU_BASED_VM_EXEC_CONTROL"
    assert parse_edit("set", "0x681e=0x1000") == ("GUEST_RIP", "set", 0x1000)     # by encoding
    assert parse_edit("andnot", "cpu_based_vm_exec_control=0b1000_0000")[2] == 0x80
    assert C.CPU_BASED_HLT_EXITING == HLT_EXITING and C.CPU_BASED_UNCOND_IO_EXITING == IO_EXITING


def test_vmx_abort_on_a_vm_exit_msr_load_of_fs_base_is_a_shutdown():
    # "Loading MSRs" at VM exit: an entry for IA32_FS_BASE (C0000100H) is a VMX abort
    # with indicator 4 ("VMX Aborts"); the processor then enters shutdown
    prog = asm("""
        cpuid
        ret
    .balign 4096
    area:
        .long 0xc0000100
        .long 0
        .quad 0
    """, IMG.FLAT_BASE)
    r = run_image(prog.code, edits=[parse_edit("set", f"VM_EXIT_MSR_LOAD_ADDR={prog.labels['area']:#x}"),
                                    parse_edit("set", "VM_EXIT_MSR_LOAD_COUNT=1")])
    assert r.launch == "VM entry succeeded"
    assert r.outcome == "shutdown" and "VMX abort, indicator 4" in r.detail
    assert f"CPUID at guest RIP {IMG.FLAT_BASE:#x}" in r.detail
    assert r.exits == []                  # the exit never reached the host (no handler, no observer)


def test_monitor_trap_flag_single_steps_the_guest():
    hello = IMG.builtin("hello")
    plain = run_image(hello)
    r = run_image(hello, edits=[parse_edit("or", f"CPU_BASED_VM_EXEC_CONTROL={C.CPU_BASED_MONITOR_TRAP_FLAG:#x}")])
    assert r.console == plain.console and r.outcome == plain.outcome == "halted"
    steps = [e for e in r.exits if e["name"] == "MONITOR_TRAP_FLAG"]
    assert len(steps) > 1000 and all(e["qualification"] == 0 for e in steps)
    assert [e["name"] for e in r.exits if e["name"] != "MONITOR_TRAP_FLAG"] == \
        [e["name"] for e in plain.exits]                     # the same other exits, in order
    rips = [e["guest_rip"] for e in steps]
    assert len(set(rips)) > 50                                # the guest advances one instruction per exit
